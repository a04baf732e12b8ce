use super::*;

fn env(vars: &[(&str, &str)]) -> Env {
    Env {
        vars: vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        cwd: None,
    }
}

const CLOUDS: &str = "\
clouds:
  pw:
    auth:
      auth_url: http://keystone:5000/v3
      username: alice
      project_name: db
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: internal
  app:
    auth_type: v3applicationcredential
    auth:
      auth_url: http://keystone:5000
      application_credential_id: ac-1
    cacert: /etc/ssl/cloud-ca.pem
    block_storage_endpoint_override: http://cinder:8776/v3/p
";

const SECURE: &str = "\
clouds:
  pw:
    auth:
      password: from-secure-yaml
  app:
    auth:
      application_credential_secret: app-secret
";

fn private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn clouds_dir() -> (tempfile::TempDir, Env) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("clouds.yaml"), CLOUDS).unwrap();
    std::fs::write(dir.path().join("secure.yaml"), SECURE).unwrap();
    private(&dir.path().join("secure.yaml"));
    let mut e = env(&[
        // Credentials in the environment that a named cloud must not pick up.
        ("OS_PASSWORD", "from-env"),
        ("OS_AUTH_URL", "http://elsewhere:5000/v3"),
        ("OS_REGION_NAME", "EnvRegion"),
    ]);
    e.cwd = Some(dir.path().to_path_buf());
    (dir, e)
}

#[test]
fn cloud_entry_with_secure_yaml_and_no_env_mixing() {
    let (_dir, e) = clouds_dir();
    let toml = OpenStack {
        cloud: Some("pw".into()),
        ..OpenStack::default()
    };
    let c = resolve(&toml, &e).unwrap();
    assert_eq!(c.auth_url.as_str(), "http://keystone:5000/v3");
    assert_eq!(
        c.tokens_url().as_str(),
        "http://keystone:5000/v3/auth/tokens"
    );
    assert_eq!(c.region.as_deref(), Some("RegionOne"));
    assert_eq!(c.interface, Interface::Internal);
    match &c.method {
        AuthMethod::Password {
            user,
            password,
            project,
        } => {
            assert_eq!(password.expose(), "from-secure-yaml");
            assert_eq!(
                user,
                &NamedRef::Name {
                    name: "alice".into(),
                    domain: DomainRef::Name("Default".into())
                }
            );
            assert_eq!(
                project,
                &NamedRef::Name {
                    name: "db".into(),
                    domain: DomainRef::Name("Default".into())
                }
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        c.source.contains("clouds.yaml cloud \"pw\""),
        "{}",
        c.source
    );
    assert!(c.source.contains("secure.yaml"), "{}", c.source);
}

#[test]
fn os_cloud_names_the_entry_and_toml_keys_win() {
    let (_dir, mut e) = clouds_dir();
    e.vars.insert("OS_CLOUD".into(), "app".into());
    let toml = OpenStack {
        region_name: Some("RegionTwo".into()),
        ..OpenStack::default()
    };
    let c = resolve(&toml, &e).unwrap();
    assert_eq!(
        c.method,
        AuthMethod::ApplicationCredential {
            credential: AppCredRef::Id("ac-1".into()),
            secret: Secret::new("app-secret"),
        }
    );
    assert_eq!(
        c.tokens_url().as_str(),
        "http://keystone:5000/v3/auth/tokens"
    );
    assert_eq!(c.region.as_deref(), Some("RegionTwo"));
    assert_eq!(
        c.http.cacert.as_deref(),
        Some(Path::new("/etc/ssl/cloud-ca.pem"))
    );
    assert_eq!(
        c.block_storage_endpoint.unwrap().as_str(),
        "http://cinder:8776/v3/p"
    );
    assert!(c.source.starts_with("volsnap.toml"), "{}", c.source);
}

#[test]
fn unknown_cloud_lists_the_known_ones() {
    let (_dir, e) = clouds_dir();
    let toml = OpenStack {
        cloud: Some("nope".into()),
        ..OpenStack::default()
    };
    let err = format!("{:#}", resolve(&toml, &e).unwrap_err());
    assert!(err.contains("no cloud \"nope\""), "{err}");
    assert!(err.contains("pw, app"), "{err}");
}

#[test]
fn missing_clouds_yaml_says_where_it_looked() {
    let e = env(&[("OS_CLIENT_CONFIG_FILE", "/nonexistent/clouds.yaml")]);
    let toml = OpenStack {
        cloud: Some("x".into()),
        ..OpenStack::default()
    };
    let err = format!("{:#}", resolve(&toml, &e).unwrap_err());
    assert!(err.contains("/nonexistent/clouds.yaml"), "{err}");
}

#[test]
fn environment_when_no_cloud_is_named() {
    let e = env(&[
        ("OS_AUTH_URL", "https://keystone.example.com:5000/v3/"),
        ("OS_USER_ID", "u-1"),
        ("OS_PASSWORD", "pw"),
        ("OS_PROJECT_ID", "p-1"),
        ("OS_INTERFACE", "publicURL"),
        ("OS_CACERT", "/ca.pem"),
        ("OS_INSECURE", "false"),
    ]);
    let c = resolve(&OpenStack::default(), &e).unwrap();
    assert_eq!(
        c.tokens_url().as_str(),
        "https://keystone.example.com:5000/v3/auth/tokens"
    );
    assert_eq!(
        c.method,
        AuthMethod::Password {
            user: NamedRef::Id("u-1".into()),
            password: Secret::new("pw"),
            project: NamedRef::Id("p-1".into()),
        }
    );
    assert_eq!(c.interface, Interface::Public);
    assert!(!c.http.insecure);
    assert_eq!(c.source, "OS_* environment");

    let e = env(&[
        ("OS_AUTH_URL", "http://k/v3"),
        ("OS_AUTH_TYPE", "v3applicationcredential"),
        ("OS_APPLICATION_CREDENTIAL_NAME", "backup"),
        ("OS_APPLICATION_CREDENTIAL_SECRET", "s"),
        ("OS_USERNAME", "bob"),
        ("OS_USER_DOMAIN_ID", "default"),
    ]);
    let c = resolve(&OpenStack::default(), &e).unwrap();
    assert_eq!(
        c.method.describe(),
        "application credential \"backup\" of user \"bob\""
    );
    let body = auth_body(&c.method).to_string();
    assert!(
        body.contains(r#""user":{"domain":{"id":"default"},"name":"bob"}"#),
        "{body}"
    );

    let e = env(&[
        ("OS_AUTH_URL", "http://k/v3"),
        ("OS_TOKEN", "tok"),
        ("OS_PROJECT_NAME", "p"),
        ("OS_PROJECT_DOMAIN_NAME", "Default"),
    ]);
    let c = resolve(&OpenStack::default(), &e).unwrap();
    assert!(matches!(c.method, AuthMethod::Token { .. }));
}

#[test]
fn incomplete_credentials_say_what_is_missing() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "no auth_url"),
        (
            &[("OS_AUTH_URL", "http://k/v3"), ("OS_USERNAME", "a")],
            "needs a password",
        ),
        (
            &[
                ("OS_AUTH_URL", "http://k/v3"),
                ("OS_USERNAME", "a"),
                ("OS_PASSWORD", "p"),
                ("OS_PROJECT_ID", "p"),
            ],
            "needs user_domain_name or user_domain_id",
        ),
        (
            &[
                ("OS_AUTH_URL", "http://k/v3"),
                ("OS_USER_ID", "a"),
                ("OS_PASSWORD", "p"),
            ],
            "needs a project",
        ),
        (
            &[("OS_AUTH_URL", "ftp://k/v3"), ("OS_TOKEN", "t")],
            "not an http:// or https:// URL",
        ),
        (
            &[("OS_AUTH_URL", "http://k/v3"), ("OS_AUTH_TYPE", "saml2")],
            "not supported",
        ),
    ];
    for (vars, expected) in cases {
        let err = format!(
            "{:#}",
            resolve(&OpenStack::default(), &env(vars)).unwrap_err()
        );
        assert!(err.contains(expected), "{vars:?}: {err}");
        assert!(!err.contains("\"p\""), "a secret in {err}");
    }
}

#[test]
fn auth_bodies_have_keystones_shape() {
    let body = auth_body(&AuthMethod::Password {
        user: NamedRef::Name {
            name: "alice".into(),
            domain: DomainRef::Name("Default".into()),
        },
        password: Secret::new("pw"),
        project: NamedRef::Id("p-1".into()),
    });
    assert_eq!(
        body,
        json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "alice", "domain": {"name": "Default"}, "password": "pw"}}},
            "scope": {"project": {"id": "p-1"}}}})
    );
    let body = auth_body(&AuthMethod::ApplicationCredential {
        credential: AppCredRef::Id("ac".into()),
        secret: Secret::new("s"),
    });
    assert_eq!(
        body,
        json!({"auth": {"identity": {"methods": ["application_credential"],
            "application_credential": {"id": "ac", "secret": "s"}}}})
    );
}

fn catalog() -> Vec<CatalogEntry> {
    let ep = |interface: &str, region: &str, url: &str| Endpoint {
        interface: interface.into(),
        region_id: Some(region.into()),
        region: Some(region.into()),
        url: url.into(),
    };
    vec![
        CatalogEntry {
            service_type: "identity".into(),
            name: "keystone".into(),
            endpoints: vec![ep("public", "RegionOne", "http://k/v3")],
        },
        CatalogEntry {
            service_type: "volumev3".into(),
            name: "cinderv3".into(),
            endpoints: vec![
                ep("public", "RegionOne", "http://c1/v3/p"),
                ep("internal", "RegionOne", "http://c1-int/v3/p"),
                ep("public", "RegionTwo", "http://c2/v3/p"),
            ],
        },
    ]
}

#[test]
fn endpoints_by_type_region_and_interface() {
    let c = catalog();
    let find = |region, interface| find_endpoint(&c, Service::BlockStorage, region, interface);
    assert_eq!(find(None, Interface::Public).unwrap(), "http://c1/v3/p");
    assert_eq!(
        find(Some("RegionTwo"), Interface::Public).unwrap(),
        "http://c2/v3/p"
    );
    assert_eq!(
        find(Some("RegionOne"), Interface::Internal).unwrap(),
        "http://c1-int/v3/p"
    );
    let err = find(Some("RegionX"), Interface::Public)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no block-storage endpoint in region \"RegionX\"")
            && err.contains("regions in the catalog: RegionOne, RegionTwo"),
        "{err}"
    );
    let err = find(Some("RegionTwo"), Interface::Admin)
        .unwrap_err()
        .to_string();
    assert!(err.contains("interfaces there: public"), "{err}");
    let err = find_endpoint(&c, Service::ObjectStore, None, Interface::Public)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no object-store service") && err.contains("identity, volumev3"),
        "{err}"
    );
}

#[test]
fn a_secure_yaml_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, e) = clouds_dir();
    let secure = dir.path().join("secure.yaml");
    let toml = OpenStack {
        cloud: Some("pw".into()),
        ..OpenStack::default()
    };
    check_cloud_files(&toml, &e).unwrap();
    std::fs::set_permissions(&secure, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = check_cloud_files(&toml, &e).unwrap_err();
    assert_eq!(crate::exit::code_for(&err), crate::exit::CONFIG);
    let text = format!("{err:#}");
    assert!(
        text.contains("holds a secret (clouds.pw.auth.password, clouds.app.auth.application_credential_secret) and is readable by group or others (mode 0640); run: chmod 600"),
        "{text}"
    );
    assert!(!text.contains("from-secure-yaml"), "{text}");
}

#[test]
fn a_broken_clouds_yaml_is_a_configuration_error_with_its_line() {
    let (dir, e) = clouds_dir();
    std::fs::write(
        dir.path().join("clouds.yaml"),
        "clouds:\n  pw:\n    auth: [unclosed\n    x: 1\n",
    )
    .unwrap();
    let toml = OpenStack {
        cloud: Some("pw".into()),
        ..OpenStack::default()
    };
    let err = check_cloud_files(&toml, &e).unwrap_err();
    assert_eq!(crate::exit::code_for(&err), crate::exit::CONFIG);
    let text = format!("{err:#}");
    let at = format!("{}:4:", dir.path().join("clouds.yaml").display());
    assert!(
        text.contains(&at) && text.contains("is not valid YAML"),
        "{text}"
    );

    // A number where a secret belongs: named by key and type, never shown.
    std::fs::write(
        dir.path().join("clouds.yaml"),
        "clouds:\n  pw:\n    auth:\n      auth_url: http://k:5000\n      password: 98765432\n",
    )
    .unwrap();
    private(&dir.path().join("clouds.yaml"));
    std::fs::remove_file(dir.path().join("secure.yaml")).unwrap();
    let err = check_cloud_files(&toml, &e).unwrap_err();
    let text = format!("{err:#}");
    assert_eq!(crate::exit::code_for(&err), crate::exit::CONFIG, "{text}");
    assert!(
        text.contains("expected a string") && !text.contains("98765432"),
        "{text}"
    );
}

#[test]
fn userinfo_in_auth_url_is_dropped() {
    let url = parse_url("https://admin:hunter2@keystone:5000/v3", "auth_url").unwrap();
    assert_eq!(url.as_str(), "https://keystone:5000/v3");
    let err = parse_url("ftp://admin:hunter2@keystone/", "auth_url").unwrap_err();
    assert!(!format!("{err:#}").contains("hunter2"), "{err:#}");
}
