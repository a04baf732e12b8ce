//! The OpenStack clients against the real Keystone, Cinder and Swift of
//! `tests/cloud/` (started by `tests/cloud/up.sh`, which writes
//! `tests/cloud/run/env.sh` and `clouds.yaml`; `VOLSNAP_TESTCLOUD_ENV` may
//! point at another env.sh).

#[path = "support/cloud.rs"]
mod cloud;
mod support;
#[path = "support/tls.rs"]
mod tls;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use volsnap::config::OpenStack;
use volsnap::openstack::auth::{self, Env, Service, Session};
use volsnap::openstack::cinder::{NewSnapshot, NewVolume, Schedule, SnapshotFilter, Target, Until};
use volsnap::openstack::swift::{md5_hex, ContainerState, SloSegment};
use volsnap::openstack::{self as os};
use volsnap::secret::Secret;

use cloud::{unique, Cloud};

/// What these tests need of the cloud beyond the shared support.
impl Cloud {
    fn clouds_yaml(&self) -> &str {
        self.get("VOLSNAP_TESTCLOUD_CLOUDS_YAML")
    }

    /// An environment naming clouds.yaml and nothing else.
    fn clouds_env(&self, os_cloud: Option<&str>) -> Env {
        let mut vars = BTreeMap::new();
        vars.insert(
            "OS_CLIENT_CONFIG_FILE".to_string(),
            self.clouds_yaml().to_string(),
        );
        if let Some(c) = os_cloud {
            vars.insert("OS_CLOUD".to_string(), c.to_string());
        }
        Env { vars, cwd: None }
    }

    fn password_config(&self) -> OpenStack {
        OpenStack {
            auth_url: Some(self.get("OS_AUTH_URL").to_string()),
            username: Some("backup".into()),
            password: Some(Secret::new(self.get("VOLSNAP_TESTCLOUD_BACKUP_PASSWORD"))),
            project_name: Some("backup".into()),
            user_domain_name: Some("Default".into()),
            project_domain_name: Some("Default".into()),
            ..OpenStack::default()
        }
    }
}

/// The driver's fault knobs are files shared by every snapshot: Cinder tests
/// run one at a time.
static CINDER: Mutex<()> = Mutex::new(());

fn assert_endpoints(cloud: &Cloud, session: &Session) {
    assert_eq!(
        session.endpoint(Service::BlockStorage).unwrap().as_str(),
        cloud.get("VOLSNAP_TESTCLOUD_CINDER_ENDPOINT")
    );
    assert_eq!(
        session.endpoint(Service::ObjectStore).unwrap().as_str(),
        cloud.get("VOLSNAP_TESTCLOUD_SWIFT_ENDPOINT")
    );
}

#[test]
fn password_from_volsnap_toml() {
    let cloud = Cloud::load();
    let config = auth::resolve(&cloud.password_config(), &Env::default()).unwrap();
    assert_eq!(config.source, "volsnap.toml [openstack]");
    let session = Session::connect(config).unwrap();
    let info = session.token_info();
    assert_eq!(info.project.unwrap().name, "backup");
    assert_eq!(info.user.unwrap().name, "backup");
    assert_endpoints(&cloud, &session);
}

#[test]
fn application_credential_from_the_os_environment() {
    let cloud = Cloud::load();
    let config = auth::resolve(&OpenStack::default(), &cloud.os_env()).unwrap();
    assert_eq!(config.source, "OS_* environment");
    assert!(
        config
            .method
            .describe()
            .starts_with("application credential "),
        "{}",
        config.method.describe()
    );
    let session = Session::connect(config).unwrap();
    assert_eq!(
        session.token_info().project.unwrap().id,
        cloud.get("VOLSNAP_TESTCLOUD_PROJECT_ID")
    );
    assert_endpoints(&cloud, &session);
}

#[test]
fn clouds_yaml_by_config_and_by_os_cloud() {
    let cloud = Cloud::load();
    // cloud = "volsnap-test" in volsnap.toml: the application credential.
    let toml = OpenStack {
        cloud: Some("volsnap-test".into()),
        ..OpenStack::default()
    };
    let session = Session::connect(auth::resolve(&toml, &cloud.clouds_env(None)).unwrap()).unwrap();
    assert_endpoints(&cloud, &session);
    // OS_CLOUD=volsnap-admin: the admin's password, the admin project.
    let config = auth::resolve(
        &OpenStack::default(),
        &cloud.clouds_env(Some("volsnap-admin")),
    )
    .unwrap();
    assert!(config.source.contains("volsnap-admin"), "{}", config.source);
    let session = Session::connect(config).unwrap();
    assert_eq!(session.token_info().project.unwrap().name, "admin");
    assert!(session
        .endpoint(Service::BlockStorage)
        .unwrap()
        .as_str()
        .starts_with(cloud.get("VOLSNAP_TESTCLOUD_CINDER_URL")));
}

#[test]
fn an_existing_token() {
    let cloud = Cloud::load();
    let token = cloud.session().token();
    let env = Env {
        vars: [
            ("OS_AUTH_URL", cloud.get("OS_AUTH_URL")),
            ("OS_TOKEN", token.expose()),
            ("OS_PROJECT_ID", cloud.get("VOLSNAP_TESTCLOUD_PROJECT_ID")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        cwd: None,
    };
    let config = auth::resolve(&OpenStack::default(), &env).unwrap();
    assert!(config.method.describe().starts_with("token for project"));
    let session = Session::connect(config).unwrap();
    // A token from an application credential is delegated: Keystone would
    // refuse to exchange it, so it is used as it is.
    assert_eq!(session.token(), token);
    assert_endpoints(&cloud, &session);

    // A password's token, the project by name.
    let config = auth::resolve(&cloud.password_config(), &Env::default()).unwrap();
    let token = Session::connect(config).unwrap().token();
    let toml = OpenStack {
        auth_url: Some(cloud.get("OS_AUTH_URL").to_string()),
        token: Some(token.clone()),
        project_name: Some("backup".into()),
        project_domain_name: Some("Default".into()),
        ..OpenStack::default()
    };
    let session = Session::connect(auth::resolve(&toml, &Env::default()).unwrap()).unwrap();
    assert_eq!(session.token(), token);
    assert_endpoints(&cloud, &session);
}

#[test]
fn a_wrong_secret_is_a_clear_401() {
    let cloud = Cloud::load();
    let mut env = cloud.os_env();
    env.vars.insert(
        "OS_APPLICATION_CREDENTIAL_SECRET".into(),
        "not-the-secret".into(),
    );
    let err = Session::connect(auth::resolve(&OpenStack::default(), &env).unwrap()).unwrap_err();
    let text = format!("{err:#}");
    for part in [
        "cannot authenticate by application credential",
        &format!("POST {}/auth/tokens", cloud.get("OS_AUTH_URL")),
        "401 Unauthorized",
        "The request you have made requires authentication.",
        "(request id req-",
    ] {
        assert!(text.contains(part), "{part:?} not in {text}");
    }
    assert!(!text.contains("not-the-secret"), "{text}");
    let api = err.downcast_ref::<os::Error>().expect("a typed error");
    assert_eq!(api.status().map(|s| s.as_u16()), Some(401));
}

#[test]
fn a_wrong_region_lists_the_regions_there_are() {
    let cloud = Cloud::load();
    let toml = OpenStack {
        region_name: Some("RegionX".into()),
        ..OpenStack::default()
    };
    let session = Session::connect(auth::resolve(&toml, &cloud.os_env()).unwrap()).unwrap();
    let err = session
        .endpoint(Service::BlockStorage)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "the catalog has no block-storage endpoint in region \"RegionX\"; regions in the catalog: RegionOne"
    );
}

#[test]
fn cinder_snapshot_round_trip() {
    let _serial = CINDER.lock().unwrap_or_else(|p| p.into_inner());
    let cloud = Cloud::load();
    let cinder = os::cinder(&cloud.session()).unwrap();
    let deadline = || Instant::now() + Duration::from_secs(60);
    let volume = cinder
        .create_volume(&NewVolume {
            size: 1,
            name: unique("vol"),
            ..NewVolume::default()
        })
        .unwrap();
    let volume = cinder
        .wait_volume(&volume.id, Target::Status("available"), deadline())
        .unwrap()
        .unwrap();
    assert!(cinder.volumes().unwrap().iter().any(|v| v.id == volume.id));

    let tag = unique("run");
    let metadata: BTreeMap<String, String> = [("volsnap".to_string(), tag.clone())].into();
    let started = Instant::now();
    let snap = cinder
        .create_snapshot(&NewSnapshot {
            volume_id: volume.id.clone(),
            name: unique("snap"),
            description: Some("volsnap integration test".into()),
            metadata: metadata.clone(),
        })
        .unwrap();
    let snap = cinder
        .wait_snapshot(&snap.id, Target::Status("available"), deadline())
        .unwrap()
        .unwrap();
    eprintln!(
        "snapshot available {} ms after the POST",
        started.elapsed().as_millis()
    );
    assert_eq!(snap.metadata, metadata);
    assert_eq!(cinder.snapshot(&snap.id).unwrap().status, "available");

    // The metadata filter is applied by the server (microversion ≥ 3.22).
    let filter = SnapshotFilter {
        volume_id: Some(volume.id.clone()),
        metadata: metadata.clone(),
        ..SnapshotFilter::default()
    };
    let found = cinder.snapshots(&filter).unwrap();
    assert_eq!(
        found.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        [snap.id.as_str()]
    );
    let other = SnapshotFilter {
        metadata: [("volsnap".to_string(), "another-run".to_string())].into(),
        ..SnapshotFilter::default()
    };
    assert!(cinder.snapshots(&other).unwrap().is_empty());

    // A volume from the snapshot.
    let restored = cinder
        .volume_from_snapshot(&snap, &unique("restored"), deadline())
        .unwrap();
    assert_eq!(restored.snapshot_id.as_deref(), Some(snap.id.as_str()));
    cinder.delete_volume(&restored.id).unwrap();
    cinder
        .wait_volume(&restored.id, Target::Gone, deadline())
        .unwrap();

    cinder.delete_snapshot(&snap.id).unwrap();
    assert!(cinder
        .wait_snapshot(&snap.id, Target::Gone, deadline())
        .unwrap()
        .is_none());
    let gone = cinder.snapshot(&snap.id).unwrap_err();
    assert!(gone.is_not_found());
    let text = gone.to_string();
    assert!(
        text.contains(&format!("snapshots/{}: 404 Not Found: ", snap.id))
            && text.contains("could not be found")
            && text.contains("(request id req-"),
        "{text}"
    );
    cinder.delete_volume(&volume.id).unwrap();
    cinder
        .wait_volume(&volume.id, Target::Gone, deadline())
        .unwrap();
}

#[test]
fn a_snapshot_in_error_ends_the_wait() {
    let _serial = CINDER.lock().unwrap_or_else(|p| p.into_inner());
    let cloud = Cloud::load();
    let cinder = os::cinder(&cloud.session()).unwrap();
    let deadline = || Instant::now() + Duration::from_secs(60);
    let volume = cinder
        .create_volume(&NewVolume {
            size: 1,
            name: unique("vol"),
            ..NewVolume::default()
        })
        .unwrap();
    cinder
        .wait_volume(&volume.id, Target::Status("available"), deadline())
        .unwrap();
    // The file-backed test driver fails the next snapshot when this file exists.
    let knob = Path::new(cloud.get("VOLSNAP_TESTCLOUD_VOLUMES")).join("snapshot-fail-next");
    std::fs::write(&knob, "").unwrap();
    let snap = cinder
        .create_snapshot(&NewSnapshot {
            volume_id: volume.id.clone(),
            name: unique("snap"),
            ..NewSnapshot::default()
        })
        .unwrap();
    let err = cinder
        .wait_snapshot(&snap.id, Target::Status("available"), deadline())
        .unwrap_err();
    let _ = std::fs::remove_file(&knob);
    assert_eq!(
        err.to_string(),
        format!(
            "snapshot {} went to status \"error\" while waiting for \"available\"",
            snap.id
        )
    );
    cinder.delete_snapshot(&snap.id).unwrap();
    cinder
        .wait_snapshot(&snap.id, Target::Gone, deadline())
        .unwrap();
    cinder.delete_volume(&volume.id).unwrap();
    cinder
        .wait_volume(&volume.id, Target::Gone, deadline())
        .unwrap();
}

/// The freeze window's wait: several snapshots followed with one list per
/// round. One outside the list's filter is asked for by id; one that fails
/// ends the wait with its id.
#[test]
fn several_snapshots_are_waited_for_together() {
    let _serial = CINDER.lock().unwrap_or_else(|p| p.into_inner());
    let cloud = Cloud::load();
    let knobs = cloud.knobs();
    let cinder = os::cinder(&cloud.session()).unwrap();
    let deadline = || Instant::now() + Duration::from_secs(60);
    let volumes: Vec<String> = (0..2)
        .map(|_| {
            let v = cinder
                .create_volume(&NewVolume {
                    size: 1,
                    name: unique("vol"),
                    ..NewVolume::default()
                })
                .unwrap();
            cinder
                .wait_volume(&v.id, Target::Status("available"), deadline())
                .unwrap();
            v.id
        })
        .collect();
    let tag = unique("run");
    let run: BTreeMap<String, String> = [("volsnap_run".to_string(), tag.clone())].into();
    let snap = |volume: &str, metadata: &BTreeMap<String, String>| {
        cinder
            .create_snapshot(&NewSnapshot {
                volume_id: volume.to_string(),
                name: unique("snap"),
                metadata: metadata.clone(),
                ..NewSnapshot::default()
            })
            .unwrap()
            .id
    };
    let filter = SnapshotFilter {
        metadata: run.clone(),
        ..SnapshotFilter::default()
    };
    let wait = |ids: &[String], seen: &mut Vec<String>| {
        let stats = std::cell::Cell::new((0, Duration::ZERO));
        let until = Until {
            deadline: deadline(),
            schedule: Schedule::FROZEN,
            stop: None,
            stats: Some(&stats),
        };
        let waited = cinder
            .wait_snapshots_available(ids, &filter, &until, |id, _| seen.push(id.to_string()));
        (waited, stats.get().0)
    };

    // The driver holds each snapshot `creating` for a while: several rounds.
    knobs.delay(0.5);
    let mut ids = vec![
        snap(&volumes[0], &run),
        snap(&volumes[1], &run),
        snap(&volumes[0], &BTreeMap::new()),
    ];
    let mut seen = Vec::new();
    let (waited, rounds) = wait(&ids, &mut seen);
    waited.unwrap();
    assert!(rounds >= 2, "{rounds} rounds");
    seen.sort();
    let mut all = ids.clone();
    all.sort();
    assert_eq!(seen, all, "each seen once");
    for id in &ids {
        assert_eq!(cinder.snapshot(id).unwrap().status, "available");
    }

    knobs.clear();
    knobs.fail_next();
    let failed = snap(&volumes[1], &run);
    ids.push(failed.clone());
    let mut seen = Vec::new();
    let (waited, _) = wait(&ids, &mut seen);
    let err = waited.unwrap_err().to_string();
    assert!(
        err.contains(&format!("\"error (snapshot {failed})\"")),
        "{err}"
    );
    assert!(!seen.contains(&failed), "{seen:?}");

    for id in &ids {
        cinder.delete_snapshot(id).unwrap();
    }
    for id in &ids {
        cinder.wait_snapshot(id, Target::Gone, deadline()).unwrap();
    }
    for v in &volumes {
        cinder.delete_volume(v).unwrap();
        cinder.wait_volume(v, Target::Gone, deadline()).unwrap();
    }
}

#[test]
fn swift_slo_round_trip() {
    let cloud = Cloud::load();
    let swift = os::swift(&cloud.session()).unwrap();
    let container = unique("c");
    assert_eq!(
        swift.ensure_container(&container, true).unwrap(),
        ContainerState::Created
    );
    assert_eq!(
        swift.ensure_container(&container, false).unwrap(),
        ContainerState::Existed
    );
    let missing = swift.ensure_container(&unique("none"), false).unwrap_err();
    assert!(missing.is_not_found(), "{missing}");

    // Three segments of different content; the last one short.
    let mut data = Vec::new();
    for i in 0..(2 * 1024 * 1024 + 12345u32) {
        data.push((i.wrapping_mul(2_654_435_761) >> 13) as u8);
    }
    let name = "volsnap/db host/2026-01-01T00:00:00Z.zst";
    let mut segments = Vec::new();
    for (i, chunk) in data.chunks(1024 * 1024).enumerate() {
        let seg = format!("{name}/{i:08}");
        let body = bytes::Bytes::copy_from_slice(chunk);
        let etag = swift
            .put_object(&container, &seg, body, &BTreeMap::new())
            .unwrap();
        assert_eq!(etag, md5_hex(chunk));
        segments.push(SloSegment {
            path: format!("/{container}/{seg}"),
            etag,
            size_bytes: chunk.len() as u64,
        });
    }
    assert_eq!(segments.len(), 3);
    let meta: BTreeMap<String, String> = [
        ("volsnap-datastore".to_string(), "none".to_string()),
        ("volsnap-sha256".to_string(), "0123abcd".to_string()),
    ]
    .into();
    swift
        .put_slo(&container, name, &segments, &meta, "application/zstd")
        .unwrap();

    let info = swift.head_object(&container, name).unwrap();
    assert!(info.static_large_object);
    assert_eq!(info.content_type.as_deref(), Some("application/zstd"));
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(info.metadata["volsnap-sha256"], "0123abcd");

    let mut reader = swift.get_object(&container, name).unwrap();
    let mut back = Vec::new();
    reader.read_to_end(&mut back).unwrap();
    assert!(back == data, "the SLO read back differs");

    let listed = swift.list_objects(&container, "volsnap/").unwrap();
    assert_eq!(listed.len(), 4, "{listed:?}");
    assert_eq!(listed[0].name, name);

    swift.delete_slo(&container, name).unwrap();
    assert!(swift.list_objects(&container, "").unwrap().is_empty());
    let gone = swift.head_object(&container, name).unwrap_err();
    assert!(gone.is_not_found(), "{gone}");
    assert!(gone.to_string().contains("(request id tx"), "{gone}");
    swift.delete_container(&container).unwrap();
}

/// A download reads an SLO from its segments, a manifest of manifests
/// followed down, each segment checked against its manifest entry: one
/// replaced after the backup, or gone, ends the download with its name.
#[test]
fn swift_download_reads_the_segments_and_checks_each() {
    let cloud = Cloud::load();
    let swift = os::swift(&cloud.session()).unwrap();
    let container = unique("dl");
    swift.ensure_container(&container, true).unwrap();
    let data: Vec<u8> = (0..(3 * 300_000 + 777u32))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let none = BTreeMap::new();
    let put_segments = |prefix: &str, chunks: &[&[u8]]| -> Vec<SloSegment> {
        chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| {
                let seg = format!("{prefix}/seg/{i:08}");
                let body = bytes::Bytes::copy_from_slice(chunk);
                let etag = swift.put_object(&container, &seg, body, &none).unwrap();
                SloSegment {
                    path: format!("/{container}/{seg}"),
                    etag,
                    size_bytes: chunk.len() as u64,
                }
            })
            .collect()
    };
    // One level: three segments, the last one short.
    let chunks: Vec<&[u8]> = data.chunks(300_000).collect();
    let segments = put_segments("flat", &chunks);
    swift
        .put_slo(
            &container,
            "flat",
            &segments,
            &none,
            "application/octet-stream",
        )
        .unwrap();
    let read = |name: &str| {
        let mut back = Vec::new();
        swift
            .download(&container, name)
            .unwrap()
            .read_to_end(&mut back)
            .map(|_| back)
    };
    assert!(read("flat").unwrap() == data, "one level read back differs");

    // Two levels: a manifest of two manifests, as stream::Tree writes one.
    let first = put_segments("tree/0", &chunks[..2]);
    let second = put_segments("tree/1", &chunks[2..]);
    let mut top = Vec::new();
    for (name, segs) in [("tree/0/manifest", &first), ("tree/1/manifest", &second)] {
        let etag = swift
            .put_slo(&container, name, segs, &none, "application/octet-stream")
            .unwrap();
        top.push(SloSegment {
            path: format!("/{container}/{name}"),
            etag,
            size_bytes: segs.iter().map(|s| s.size_bytes).sum(),
        });
    }
    swift
        .put_slo(&container, "tree", &top, &none, "application/octet-stream")
        .unwrap();
    assert!(read("tree").unwrap() == data, "two levels read back differ");

    // A plain object is read as it is.
    swift
        .put_object(
            &container,
            "plain",
            bytes::Bytes::from_static(b"just bytes"),
            &none,
        )
        .unwrap();
    assert_eq!(read("plain").unwrap(), b"just bytes");

    // What a body that broke off is resumed with: the rest from a byte on,
    // if it is still the same object.
    let mut rest = Vec::new();
    let mut reader = swift
        .get_object_from(&container, "flat/seg/00000001", 1000, &segments[1].etag)
        .unwrap();
    assert_eq!(reader.info.size, 299_000);
    reader.read_to_end(&mut rest).unwrap();
    assert!(
        rest == data[301_000..600_000],
        "the rest of a segment differs"
    );
    let other = swift
        .get_object_from(&container, "flat/seg/00000001", 1000, &"0".repeat(32))
        .err()
        .expect("If-Match with another ETag");
    assert_eq!(
        other.status(),
        Some(reqwest::StatusCode::PRECONDITION_FAILED),
        "{other}"
    );

    // A segment replaced by as many other bytes: refused by its ETag.
    let changed = bytes::Bytes::from(vec![0u8; 300_000]);
    swift
        .put_object(&container, "flat/seg/00000001", changed, &none)
        .unwrap();
    let err = read("flat").unwrap_err().to_string();
    assert!(err.contains("flat/seg/00000001"), "{err}");
    assert!(err.contains("replaced after the backup"), "{err}");
    assert!(err.contains("at byte 300000 of"), "{err}");

    // A segment gone: its 404, named.
    swift
        .delete_object(&container, "tree/1/seg/00000000")
        .unwrap();
    let err = read("tree").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("tree/1/seg/00000000"), "{err}");

    for name in swift.list_objects(&container, "").unwrap() {
        swift.delete_object(&container, &name.name).unwrap();
    }
    swift.delete_container(&container).unwrap();
}

/// Over real TLS (rustls on both ends) to the real Keystone: with the CA as
/// `cacert` it authenticates; without it, the certificate is refused.
#[test]
fn tls_with_the_ca_from_cacert() {
    let cloud = Cloud::load();
    let keystone: std::net::SocketAddr = cloud
        .get("VOLSNAP_TESTCLOUD_KEYSTONE_URL")
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = tls::start(keystone);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &proxy.ca_pem).unwrap();

    let mut env = cloud.os_env();
    env.vars
        .insert("OS_AUTH_URL".into(), format!("{}/v3", proxy.url));
    let without = auth::resolve(&OpenStack::default(), &env).unwrap();
    let started = Instant::now();
    let err = format!("{:#}", Session::connect(without).unwrap_err());
    // A refused certificate is not retried.
    assert!(started.elapsed() < Duration::from_secs(1), "{err}");
    assert!(!err.contains("gave up"), "{err}");
    assert!(
        err.contains("certificate") && err.contains("UnknownIssuer"),
        "{err}"
    );

    env.vars
        .insert("OS_CACERT".into(), ca.display().to_string());
    let with = auth::resolve(&OpenStack::default(), &env).unwrap();
    assert_eq!(with.http.cacert.as_deref(), Some(ca.as_path()));
    let session = Session::connect(with).unwrap();
    assert_endpoints(&cloud, &session);
}

/// A download read as it arrives goes through its own (async) client: over
/// real TLS to the real Swift, it trusts the `cacert` CA as the other
/// requests do, and without it the certificate is refused.
#[test]
fn tls_download_read_as_it_arrives_trusts_the_ca_from_cacert() {
    let cloud = Cloud::load();
    let plain = os::swift(&cloud.session()).unwrap();
    let endpoint = plain.endpoint().clone();
    let backend: std::net::SocketAddr = format!(
        "{}:{}",
        endpoint.host_str().unwrap(),
        endpoint.port().unwrap()
    )
    .parse()
    .unwrap();
    let proxy = tls::start(backend);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &proxy.ca_pem).unwrap();
    let over_tls = |cacert: Option<PathBuf>| {
        let options = os::http::HttpOptions {
            cacert,
            ..os::http::HttpOptions::default()
        };
        let http = os::http::Http::new(&options).unwrap();
        let url = format!("{}{}", proxy.url, endpoint.path());
        os::swift::Swift::new(
            Session::with_token(http, cloud.session().token()),
            reqwest::Url::parse(&url).unwrap(),
        )
    };

    let container = unique("tls");
    plain.ensure_container(&container, true).unwrap();
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 7u32)
        .map(|i| (i % 241) as u8)
        .collect();
    plain
        .put_object(
            &container,
            "o",
            bytes::Bytes::from(data.clone()),
            &Default::default(),
        )
        .unwrap();

    let mut back = Vec::new();
    over_tls(Some(ca))
        .get_object(&container, "o")
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == data, "the download over TLS differs");

    let started = Instant::now();
    let refused = over_tls(None)
        .get_object(&container, "o")
        .err()
        .expect("a download from an unknown CA was accepted");
    let text = format!("{refused:#}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "retried: {text}"
    );
    assert!(text.contains("UnknownIssuer"), "{text}");

    plain.delete_object(&container, "o").unwrap();
    plain.delete_container(&container).unwrap();
}

fn volsnap(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_volsnap"));
    cmd.arg("--config").arg(config).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("OS_") || k == "RUST_LOG" || k == "VOLSNAP_CONFIG" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("volsnap.toml");
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_online_swift_through_the_binary() {
    let cloud = Cloud::load();
    let tmp = tempfile::tempdir().unwrap();
    let hooks = support::hooks_dir(tmp.path(), &[("none", support::NONE_HOOK)]);
    let container = unique("check");
    let config = write_config(
        tmp.path(),
        &format!(
            "datastore = \"none\"\nruntime_dir = {:?}\n[openstack]\ncloud = \"volsnap-test\"\n\
             [swift]\ncontainer = {container:?}\n[hooks]\ndir = {:?}\n",
            tmp.path().join("run").display().to_string(),
            hooks.display().to_string()
        ),
    );
    let env = [("OS_CLIENT_CONFIG_FILE", cloud.clouds_yaml())];
    let out = volsnap(&config, &["check"], &env);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    // check creates nothing: a missing container is what a backup creates.
    assert!(
        stdout.contains("ok: authentication: application credential")
            && stdout.contains(&format!(
                "ok: container: container {container} does not exist; a backup will create it"
            )),
        "{stdout}"
    );
    let swift = os::swift(&cloud.session()).unwrap();
    let segments = format!("{container}_segments");
    assert!(swift
        .list_objects(&container, "")
        .unwrap_err()
        .is_not_found());
    for c in [&container, &segments] {
        swift.ensure_container(c, true).unwrap();
    }
    let out = volsnap(&config, &["--json", "check"], &env);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(
        checks
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        [
            "authentication",
            "object-store endpoint",
            "container",
            "container",
            "orphan segments"
        ]
    );
    assert_eq!(checks[2]["detail"], format!("container {container} exists"));
    assert_eq!(checks[3]["detail"], format!("container {segments} exists"));

    // A container that does not exist and may not be created: exit 1.
    let config = write_config(
        tmp.path(),
        &format!(
            "datastore = \"none\"\nruntime_dir = {:?}\n[openstack]\ncloud = \"volsnap-test\"\n\
             [swift]\ncontainer = \"{container}-absent\"\ncreate_container = false\n[hooks]\ndir = {:?}\n",
            tmp.path().join("run").display().to_string(),
            hooks.display().to_string()
        ),
    );
    let out = volsnap(&config, &["check"], &env);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "problem: container: container {container}-absent does not exist and create_container = false (HEAD "
        )),
        "{stdout}"
    );
    for c in [&container, &segments] {
        swift.delete_container(c).unwrap();
    }
}

#[test]
fn check_online_cinder_through_the_binary() {
    let _serial = CINDER.lock().unwrap_or_else(|p| p.into_inner());
    let cloud = Cloud::load();
    let cinder = os::cinder(&cloud.session()).unwrap();
    let volume = cinder
        .create_volume(&NewVolume {
            size: 1,
            name: unique("check"),
            ..NewVolume::default()
        })
        .unwrap();
    cinder
        .wait_volume(
            &volume.id,
            Target::Status("available"),
            Instant::now() + Duration::from_secs(60),
        )
        .unwrap();
    let fs = support::LoopFs::new("ext4", 32);
    let tmp = tempfile::tempdir().unwrap();
    let hooks = support::hooks_dir(tmp.path(), &[("none", support::NONE_HOOK)]);
    let write = |id: Option<&str>| {
        let volumes = id
            .map(|id| {
                format!(
                    "[cinder.volumes]\n{:?} = {id:?}\n",
                    fs.mount.display().to_string()
                )
            })
            .unwrap_or_default();
        write_config(
            tmp.path(),
            &format!(
                "storage_strategy = \"Cinder\"\ndatastore = \"none\"\nmounts = [{:?}]\n\
                 runtime_dir = {:?}\n[openstack]\nregion_name = \"RegionOne\"\n\
                 {volumes}[hooks]\ndir = {:?}\n",
                fs.mount.display().to_string(),
                tmp.path().join("run").display().to_string(),
                hooks.display().to_string(),
            ),
        )
    };
    let os_env: Vec<(String, String)> = cloud.os_env().vars.into_iter().collect();
    let env: Vec<(&str, &str)> = os_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();

    let out = volsnap(&write(Some(&volume.id)), &["check"], &env);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "ok: volume for {}: volume {} is available, 1 GiB",
            fs.mount.display(),
            volume.id
        )),
        "{stdout}"
    );

    let absent = "00000000-0000-4000-8000-000000000000";
    let out = volsnap(&write(Some(absent)), &["check"], &env);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "problem: volume for {}: volume {absent} does not exist in this project (GET ",
            fs.mount.display()
        )) && stdout.contains("404 Not Found")
            && stdout.contains("request id req-"),
        "{stdout}"
    );

    // No id: discovery from the disk's serial, which a loop device has not.
    let out = volsnap(&write(None), &["check"], &env);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("problem: volume for {}: ", fs.mount.display()))
            && stdout.contains("which has no serial"),
        "{stdout}"
    );
    cinder.delete_volume(&volume.id).unwrap();
}

/// `-vvv` logs every request; none of the secrets may be in them.
#[test]
fn no_secret_in_trace_logs() {
    let cloud = Cloud::load();
    let token = cloud.session().token();
    let tmp = tempfile::tempdir().unwrap();
    let hooks = support::hooks_dir(tmp.path(), &[("none", support::NONE_HOOK)]);
    let container = unique("trace");
    let base = format!(
        "datastore = \"none\"\nruntime_dir = {:?}\n[swift]\ncontainer = {container:?}\n\
         [hooks]\ndir = {:?}\n[openstack]\n",
        tmp.path().join("run").display().to_string(),
        hooks.display().to_string()
    );
    let password = cloud.get("VOLSNAP_TESTCLOUD_BACKUP_PASSWORD").to_string();
    let app_secret = cloud.get("OS_APPLICATION_CREDENTIAL_SECRET").to_string();
    let auth_url = cloud.get("OS_AUTH_URL").to_string();
    let project_id = cloud.get("VOLSNAP_TESTCLOUD_PROJECT_ID").to_string();
    let os_env: Vec<(String, String)> = cloud.os_env().vars.into_iter().collect();
    let runs: Vec<(String, Vec<(&str, &str)>)> = vec![
        (
            format!(
                "{base}auth_url = {auth_url:?}\nusername = \"backup\"\npassword = {password:?}\n\
                 project_name = \"backup\"\nuser_domain_name = \"Default\"\nproject_domain_name = \"Default\"\n"
            ),
            vec![],
        ),
        (
            base.clone(),
            os_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
        ),
        (
            base.clone(),
            vec![
                ("OS_AUTH_URL", auth_url.as_str()),
                ("OS_TOKEN", token.expose()),
                ("OS_PROJECT_ID", project_id.as_str()),
            ],
        ),
    ];
    for (body, env) in runs {
        let config = write_config(tmp.path(), &body);
        let out = volsnap(&config, &["-vvv", "check"], &env);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
        assert!(
            stderr.contains("TRACE") || stderr.contains("DEBUG"),
            "{stderr}"
        );
        assert!(stderr.contains("/auth/tokens -> 20"), "{stderr}");
        for secret in [password.as_str(), app_secret.as_str(), token.expose()] {
            assert!(
                !stderr.contains(secret) && !stdout.contains(secret),
                "a secret in the output:\n{stdout}\n{stderr}"
            );
        }
    }
    // Nothing to delete unless check created the container, which it must
    // not (check_online_swift_through_the_binary); never leave one behind.
    match os::swift(&cloud.session())
        .unwrap()
        .delete_container(&container)
    {
        Err(e) if !e.is_not_found() => panic!("{e}"),
        _ => {}
    }
}
