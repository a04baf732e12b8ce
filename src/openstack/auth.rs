//! Keystone v3: where the credentials come from, the token, the catalog, and
//! the [`Session`] every service sends its requests through.
//!
//! # Where the credentials come from
//!
//! volsnap reads the same sources as openstackclient, in three layers. For
//! each key the first layer that sets it wins:
//!
//! 1. **volsnap.toml** `[openstack]` — every key written there.
//! 2. **a clouds.yaml entry** — when a cloud is named by `cloud = "NAME"` in
//!    volsnap.toml or, failing that, by `OS_CLOUD`. clouds.yaml is the first
//!    file found of `$OS_CLIENT_CONFIG_FILE`, `./clouds.yaml`,
//!    `~/.config/openstack/clouds.yaml`, `/etc/openstack/clouds.yaml`;
//!    `secure.yaml` (`$OS_CLIENT_SECURE_FILE`, or the same directories) is
//!    merged into the entry, its keys winning.
//! 3. **the `OS_*` environment** — *only when no cloud is named*. A named
//!    cloud is a complete description, so an `OS_PASSWORD` left in the
//!    environment never mixes into it (openstackclient does mix them, which
//!    surprises). `OS_CLIENT_CONFIG_FILE`, `OS_CLIENT_SECURE_FILE` and
//!    `OS_CLOUD` are read in either case.
//!
//! The method is `auth_type` when given (`password`/`v3password`,
//! `v3applicationcredential`, `token`/`v3token`); otherwise an application
//! credential secret means an application credential, a token means a token,
//! and anything else means a password. Names need their domains
//! (`user_domain_name`/`_id`, `project_domain_name`/`_id`, or clouds.yaml's
//! `default_domain_name`/`_id`).
//!
//! `auth_url` may end in `/v3` or be the bare Keystone root; volsnap posts to
//! `…/v3/auth/tokens`. The token comes back in `X-Subject-Token`, with the
//! catalog. Endpoints are taken from the catalog for `region_name` (any
//! region if unset) and `interface` (default `public`): block storage is
//! the first of the service types `block-storage`, `volumev3`, `volume`;
//! object storage is `object-store`. `block_storage_endpoint` /
//! `object_store_endpoint` (clouds.yaml: `*_endpoint_override`) replace the
//! catalog's URL. TLS: `cacert` (clouds.yaml `cacert`, `OS_CACERT`) is
//! trusted besides the system's CAs; `insecure = true` (clouds.yaml
//! `verify: false`, `OS_INSECURE=true`) turns verification off, with a
//! warning. Timeouts come from volsnap.toml only.
//!
//! Secrets (passwords, application credential secrets, tokens) are
//! [`Secret`]s from the moment they are read; no log line holds one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context as _};
use reqwest::blocking::Response;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::json;

use super::http::{self, BodyReader, Early, Error, Http, HttpOptions, Request};
use crate::config::{files, AuthType, ConfigDuration, ConfigError, Interface, OpenStack};
use crate::secret::{strip_userinfo, Secret};

/// The process environment as far as OpenStack cares: `OS_*`, `HOME` and the
/// working directory (for `./clouds.yaml`). Tests build their own.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub vars: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
}

impl Env {
    pub fn from_process() -> Env {
        Env {
            vars: std::env::vars()
                .filter(|(k, _)| k.starts_with("OS_") || k == "HOME")
                .collect(),
            cwd: std::env::current_dir().ok(),
        }
    }

    fn get(&self, name: &str) -> Option<String> {
        self.vars.get(name).filter(|v| !v.is_empty()).cloned()
    }
}

/// The service types looked up in the catalog, in order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    BlockStorage,
    ObjectStore,
}

impl Service {
    pub fn types(self) -> &'static [&'static str] {
        match self {
            Service::BlockStorage => &["block-storage", "volumev3", "volume"],
            Service::ObjectStore => &["object-store"],
        }
    }

    pub fn name(self) -> &'static str {
        self.types()[0]
    }

    fn config_key(self) -> &'static str {
        match self {
            Service::BlockStorage => "openstack.block_storage_endpoint",
            Service::ObjectStore => "openstack.object_store_endpoint",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainRef {
    Id(String),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamedRef {
    Id(String),
    Name { name: String, domain: DomainRef },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    Password {
        user: NamedRef,
        password: Secret,
        project: NamedRef,
    },
    ApplicationCredential {
        /// The id, or the name with its user.
        credential: AppCredRef,
        secret: Secret,
    },
    /// An existing token, used as it is when it is scoped to `project` (or
    /// no project is asked for); otherwise exchanged for one that is.
    Token {
        token: Secret,
        project: Option<NamedRef>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppCredRef {
    Id(String),
    Name { name: String, user: NamedRef },
}

impl AuthMethod {
    /// Names the method and who, for messages (never a secret).
    pub fn describe(&self) -> String {
        match self {
            AuthMethod::Password { user, project, .. } => {
                format!(
                    "password of user {} for project {}",
                    who(user),
                    who(project)
                )
            }
            AuthMethod::ApplicationCredential { credential, .. } => match credential {
                AppCredRef::Id(id) => format!("application credential {id}"),
                AppCredRef::Name { name, user } => {
                    format!("application credential {name:?} of user {}", who(user))
                }
            },
            AuthMethod::Token { project, .. } => match project {
                Some(p) => format!("token for project {}", who(p)),
                None => "token".to_string(),
            },
        }
    }
}

fn who(r: &NamedRef) -> String {
    match r {
        NamedRef::Id(id) => id.clone(),
        NamedRef::Name { name, .. } => format!("{name:?}"),
    }
}

/// Everything needed to authenticate and pick endpoints, resolved from the
/// layers described in the module doc.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub auth_url: Url,
    pub method: AuthMethod,
    pub region: Option<String>,
    pub interface: Interface,
    pub block_storage_endpoint: Option<Url>,
    pub object_store_endpoint: Option<Url>,
    pub http: HttpOptions,
    /// Where the settings came from, e.g. "volsnap.toml, clouds.yaml cloud \"x\" (/path)".
    pub source: String,
}

impl AuthConfig {
    fn tokens_url(&self) -> Url {
        tokens_url(&self.auth_url)
    }
}

fn tokens_url(auth_url: &Url) -> Url {
    let base = auth_url.as_str().trim_end_matches('/');
    let url = if base.ends_with("/v3") {
        format!("{base}/auth/tokens")
    } else {
        format!("{base}/v3/auth/tokens")
    };
    // A valid URL plus a plain path stays valid.
    Url::parse(&url).expect("tokens URL")
}

/// Resolves the credentials from volsnap.toml, clouds.yaml and the
/// environment (see the module doc for the order).
pub fn resolve(toml: &OpenStack, env: &Env) -> anyhow::Result<AuthConfig> {
    let mut sources = Vec::new();
    if has_any(toml) {
        sources.push("volsnap.toml [openstack]".to_string());
    }
    let cloud_name = toml.cloud.clone().or_else(|| env.get("OS_CLOUD"));
    let lower = match &cloud_name {
        Some(name) => {
            let (layer, files) = cloud_layer(name, env)?;
            sources.push(format!("clouds.yaml cloud {name:?} ({files})"));
            layer
        }
        None => {
            let layer = env_layer(env)?;
            if has_any(&layer) {
                sources.push("OS_* environment".to_string());
            }
            layer
        }
    };
    let merged = merge(toml.clone(), lower);
    let source = if sources.is_empty() {
        "nothing".to_string()
    } else {
        sources.join(" over ")
    };
    build(merged, source)
}

fn has_any(o: &OpenStack) -> bool {
    o.auth_url.is_some()
        || o.username.is_some()
        || o.user_id.is_some()
        || o.password.is_some()
        || o.application_credential_id.is_some()
        || o.application_credential_name.is_some()
        || o.application_credential_secret.is_some()
        || o.token.is_some()
        || o.project_id.is_some()
        || o.project_name.is_some()
        || o.region_name.is_some()
}

/// Field by field: `upper` wins where it sets a key.
fn merge(upper: OpenStack, lower: OpenStack) -> OpenStack {
    OpenStack {
        cloud: upper.cloud.or(lower.cloud),
        auth_url: upper.auth_url.or(lower.auth_url),
        auth_type: upper.auth_type.or(lower.auth_type),
        username: upper.username.or(lower.username),
        user_id: upper.user_id.or(lower.user_id),
        user_domain_name: upper.user_domain_name.or(lower.user_domain_name),
        user_domain_id: upper.user_domain_id.or(lower.user_domain_id),
        password: upper.password.or(lower.password),
        project_name: upper.project_name.or(lower.project_name),
        project_id: upper.project_id.or(lower.project_id),
        project_domain_name: upper.project_domain_name.or(lower.project_domain_name),
        project_domain_id: upper.project_domain_id.or(lower.project_domain_id),
        application_credential_id: upper
            .application_credential_id
            .or(lower.application_credential_id),
        application_credential_name: upper
            .application_credential_name
            .or(lower.application_credential_name),
        application_credential_secret: upper
            .application_credential_secret
            .or(lower.application_credential_secret),
        token: upper.token.or(lower.token),
        region_name: upper.region_name.or(lower.region_name),
        interface: upper.interface.or(lower.interface),
        cacert: upper.cacert.or(lower.cacert),
        insecure: upper.insecure.or(lower.insecure),
        block_storage_endpoint: upper
            .block_storage_endpoint
            .or(lower.block_storage_endpoint),
        object_store_endpoint: upper.object_store_endpoint.or(lower.object_store_endpoint),
        connect_timeout: upper.connect_timeout.or(lower.connect_timeout),
        request_timeout: upper.request_timeout.or(lower.request_timeout),
    }
}

fn parse_auth_type(value: &str, whence: &str) -> anyhow::Result<AuthType> {
    Ok(match value.to_ascii_lowercase().as_str() {
        "password" | "v3password" => AuthType::Password,
        "v3applicationcredential" | "applicationcredential" | "application_credential" => {
            AuthType::ApplicationCredential
        }
        "token" | "v3token" => AuthType::Token,
        other => bail!(
            "{whence}: auth type {other:?} is not supported; volsnap supports \"password\", \"v3applicationcredential\", \"token\""
        ),
    })
}

fn parse_interface(value: &str, whence: &str) -> anyhow::Result<Interface> {
    Ok(match value.to_ascii_lowercase().trim_end_matches("url") {
        "public" => Interface::Public,
        "internal" => Interface::Internal,
        "admin" => Interface::Admin,
        other => {
            bail!("{whence}: interface {other:?} is not one of \"public\", \"internal\", \"admin\"")
        }
    })
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

fn env_layer(env: &Env) -> anyhow::Result<OpenStack> {
    let get = |k: &str| env.get(k);
    let insecure = match get("OS_INSECURE") {
        Some(v) => Some(
            parse_bool(&v).with_context(|| format!("OS_INSECURE={v:?} is not true or false"))?,
        ),
        None => None,
    };
    Ok(OpenStack {
        auth_url: get("OS_AUTH_URL"),
        auth_type: get("OS_AUTH_TYPE")
            .map(|v| parse_auth_type(&v, "OS_AUTH_TYPE"))
            .transpose()?,
        username: get("OS_USERNAME"),
        user_id: get("OS_USER_ID"),
        user_domain_name: get("OS_USER_DOMAIN_NAME").or_else(|| get("OS_DEFAULT_DOMAIN_NAME")),
        user_domain_id: get("OS_USER_DOMAIN_ID").or_else(|| get("OS_DEFAULT_DOMAIN_ID")),
        password: get("OS_PASSWORD").map(Secret::new),
        project_name: get("OS_PROJECT_NAME").or_else(|| get("OS_TENANT_NAME")),
        project_id: get("OS_PROJECT_ID").or_else(|| get("OS_TENANT_ID")),
        project_domain_name: get("OS_PROJECT_DOMAIN_NAME")
            .or_else(|| get("OS_DEFAULT_DOMAIN_NAME")),
        project_domain_id: get("OS_PROJECT_DOMAIN_ID").or_else(|| get("OS_DEFAULT_DOMAIN_ID")),
        application_credential_id: get("OS_APPLICATION_CREDENTIAL_ID"),
        application_credential_name: get("OS_APPLICATION_CREDENTIAL_NAME"),
        application_credential_secret: get("OS_APPLICATION_CREDENTIAL_SECRET").map(Secret::new),
        token: get("OS_TOKEN").map(Secret::new),
        region_name: get("OS_REGION_NAME"),
        interface: get("OS_INTERFACE")
            .or_else(|| get("OS_ENDPOINT_TYPE"))
            .map(|v| parse_interface(&v, "OS_INTERFACE"))
            .transpose()?,
        cacert: get("OS_CACERT").map(PathBuf::from),
        insecure,
        ..OpenStack::default()
    })
}

/// One `clouds:` entry of clouds.yaml (secure.yaml merged), the keys volsnap
/// uses; the many others openstacksdk knows are ignored.
#[derive(Debug, Default, Deserialize)]
struct CloudEntry {
    #[serde(default)]
    auth: CloudAuth,
    auth_type: Option<String>,
    region_name: Option<String>,
    #[serde(default)]
    regions: Vec<serde_norway::Value>,
    interface: Option<String>,
    endpoint_type: Option<String>,
    cacert: Option<PathBuf>,
    verify: Option<bool>,
    insecure: Option<bool>,
    block_storage_endpoint_override: Option<String>,
    volume_endpoint_override: Option<String>,
    object_store_endpoint_override: Option<String>,
    profile: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct CloudAuth {
    auth_url: Option<String>,
    username: Option<String>,
    user_id: Option<String>,
    password: Option<Secret>,
    project_name: Option<String>,
    project_id: Option<String>,
    tenant_name: Option<String>,
    tenant_id: Option<String>,
    user_domain_name: Option<String>,
    user_domain_id: Option<String>,
    project_domain_name: Option<String>,
    project_domain_id: Option<String>,
    default_domain_name: Option<String>,
    default_domain_id: Option<String>,
    application_credential_id: Option<String>,
    application_credential_name: Option<String>,
    application_credential_secret: Option<Secret>,
    token: Option<Secret>,
}

fn candidates(env: &Env, file: &str, variable: &str) -> Vec<PathBuf> {
    if let Some(path) = env.get(variable) {
        return vec![PathBuf::from(path)];
    }
    let mut out = Vec::new();
    if let Some(cwd) = &env.cwd {
        out.push(cwd.join(file));
    }
    if let Some(home) = env.get("HOME") {
        out.push(Path::new(&home).join(".config/openstack").join(file));
    }
    out.push(Path::new("/etc/openstack").join(file));
    out
}

/// clouds.yaml or secure.yaml, read as volsnap.toml is: a regular file of
/// at most 1 MiB; parse errors name the line (exit 78). One that holds a
/// secret is held to the config's strict modes, since its owner could send
/// volsnap's backups and credentials elsewhere; secure.yaml, which exists
/// to hold secrets, must also be unreadable by group and others.
fn read_yaml(path: &Path, secure: bool) -> Result<serde_norway::Value, ConfigError> {
    let (text, meta) = files::read_regular(path)?;
    let value: serde_norway::Value = serde_norway::from_str(&text).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        position: e.location().map(|l| (l.line(), l.column())),
        key: None,
        message: format!("is not valid YAML: {}", yaml_message(&e)),
    })?;
    let secrets = secret_keys(&value);
    if secrets.is_empty() {
        return Ok(value);
    }
    let what = if secure { "secure.yaml" } else { "clouds.yaml" };
    files::check_trusted(path, &meta, what)
        .map_err(|message| ConfigError::whole_file(path, message))?;
    let mode = std::os::unix::fs::MetadataExt::mode(&meta) & 0o777;
    if mode & 0o044 != 0 {
        let message = format!(
            "holds a secret ({}) and is readable by group or others (mode {mode:04o}); run: chmod 600 {}",
            secrets.join(", "),
            path.display()
        );
        if secure {
            return Err(ConfigError::whole_file(path, message));
        }
        log::warn!("{}: {message}", path.display());
    }
    Ok(value)
}

/// serde_norway's message without the position it appends (the error
/// carries that separately).
fn yaml_message(e: &serde_norway::Error) -> String {
    let text = e.to_string();
    match text.find(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The secret keys a clouds.yaml or secure.yaml holds, as `clouds.NAME.auth.KEY`.
fn secret_keys(value: &serde_norway::Value) -> Vec<String> {
    fn walk(value: &serde_norway::Value, at: &str, out: &mut Vec<String>) {
        if let serde_norway::Value::Mapping(map) = value {
            for (k, v) in map {
                let Some(k) = k.as_str() else { continue };
                let here = if at.is_empty() {
                    k.to_string()
                } else {
                    format!("{at}.{k}")
                };
                let secret = matches!(k, "password" | "application_credential_secret" | "token");
                if secret && !v.is_null() {
                    out.push(here);
                } else {
                    walk(v, &here, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(value, "", &mut out);
    out
}

/// Reads clouds.yaml and secure.yaml when a cloud is named, as a backup
/// would, so that `check --offline` finds a broken or unsafe file: those are
/// configuration errors (78); anything else (no such cloud) is returned as
/// the problem it is.
pub fn check_cloud_files(toml: &OpenStack, env: &Env) -> anyhow::Result<()> {
    match toml.cloud.clone().or_else(|| env.get("OS_CLOUD")) {
        Some(name) => cloud_layer(&name, env).map(drop),
        None => Ok(()),
    }
}

/// `upper`'s keys win, recursively through mappings.
fn deep_merge(lower: &mut serde_norway::Value, upper: serde_norway::Value) {
    use serde_norway::Value;
    match (lower, upper) {
        (Value::Mapping(low), Value::Mapping(up)) => {
            for (k, v) in up {
                match low.get_mut(&k) {
                    Some(existing) => deep_merge(existing, v),
                    None => {
                        low.insert(k, v);
                    }
                }
            }
        }
        (low, up) => *low = up,
    }
}

fn cloud_layer(name: &str, env: &Env) -> anyhow::Result<(OpenStack, String)> {
    let clouds_candidates = candidates(env, "clouds.yaml", "OS_CLIENT_CONFIG_FILE");
    // Both are configuration mistakes (exit 78), named with the key that
    // asked for the cloud.
    let Some(clouds_path) = clouds_candidates.iter().find(|p| p.is_file()) else {
        return Err(ConfigError::whole_file(
            Path::new("clouds.yaml"),
            format!(
                "openstack.cloud = {name:?} is named but no clouds.yaml was found (looked at {})",
                clouds_candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .into());
    };
    let clouds = read_yaml(clouds_path, false)?;
    let Some(mut entry) = clouds.get("clouds").and_then(|c| c.get(name)).cloned() else {
        let known: Vec<String> = clouds
            .get("clouds")
            .and_then(|c| c.as_mapping())
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        return Err(ConfigError::whole_file(
            clouds_path,
            format!(
                "has no cloud {name:?} (openstack.cloud; clouds there: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        )
        .into());
    };
    let mut files = clouds_path.display().to_string();
    let secure_candidates = candidates(env, "secure.yaml", "OS_CLIENT_SECURE_FILE");
    if let Some(secure_path) = secure_candidates.iter().find(|p| p.is_file()) {
        let secure = read_yaml(secure_path, true)?;
        if let Some(secret_entry) = secure.get("clouds").and_then(|c| c.get(name)).cloned() {
            deep_merge(&mut entry, secret_entry);
            files.push_str(&format!(" + {}", secure_path.display()));
        }
    }
    let whence = format!("{} cloud {name:?}", clouds_path.display());
    let entry: CloudEntry = serde_norway::from_value(entry).map_err(|e| ConfigError {
        file: clouds_path.clone(),
        position: None,
        key: Some(format!("clouds.{name}")),
        message: format!("unexpected value: {}", yaml_message(&e)),
    })?;
    if let Some(profile) = &entry.profile {
        log::warn!("{whence}: profile {profile:?} is ignored; volsnap reads only the entry itself");
    }
    let a = entry.auth;
    let region_name = entry.region_name.or_else(|| {
        entry.regions.first().and_then(|r| match r {
            serde_norway::Value::String(s) => Some(s.clone()),
            other => other
                .get("name")
                .and_then(|n| n.as_str())
                .map(str::to_string),
        })
    });
    let insecure = entry.verify.map(|v| !v).or(entry.insecure);
    let layer = OpenStack {
        auth_url: a.auth_url,
        auth_type: entry
            .auth_type
            .map(|t| parse_auth_type(&t, &whence))
            .transpose()?,
        username: a.username,
        user_id: a.user_id,
        user_domain_name: a.user_domain_name.or_else(|| a.default_domain_name.clone()),
        user_domain_id: a.user_domain_id.or_else(|| a.default_domain_id.clone()),
        password: a.password,
        project_name: a.project_name.or(a.tenant_name),
        project_id: a.project_id.or(a.tenant_id),
        project_domain_name: a.project_domain_name.or(a.default_domain_name),
        project_domain_id: a.project_domain_id.or(a.default_domain_id),
        application_credential_id: a.application_credential_id,
        application_credential_name: a.application_credential_name,
        application_credential_secret: a.application_credential_secret,
        token: a.token,
        region_name,
        interface: entry
            .interface
            .or(entry.endpoint_type)
            .map(|v| parse_interface(&v, &whence))
            .transpose()?,
        cacert: entry.cacert,
        insecure,
        block_storage_endpoint: entry
            .block_storage_endpoint_override
            .or(entry.volume_endpoint_override),
        object_store_endpoint: entry.object_store_endpoint_override,
        ..OpenStack::default()
    };
    Ok((layer, files))
}

fn domain(id: Option<String>, name: Option<String>) -> Option<DomainRef> {
    id.map(DomainRef::Id).or(name.map(DomainRef::Name))
}

/// A URL without its userinfo: Keystone takes credentials in the request
/// body, and a `user:password@` left in the URL would be in every log line
/// and error that names it.
fn parse_url(value: &str, key: &str) -> anyhow::Result<Url> {
    let shown = strip_userinfo(value);
    let mut url = Url::parse(value).with_context(|| format!("{key} {shown:?} is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("{key} {shown:?} is not an http:// or https:// URL");
    }
    if !url.username().is_empty() || url.password().is_some() {
        log::warn!("{key} {shown}: the user and password in the URL are ignored (and never logged); give them as their own keys");
        let _ = url.set_username("");
        let _ = url.set_password(None);
    }
    Ok(url)
}

fn build(o: OpenStack, source: String) -> anyhow::Result<AuthConfig> {
    let whence = format!("OpenStack credentials (from {source})");
    let auth_url = match &o.auth_url {
        Some(url) => parse_url(url, "auth_url")?,
        None => bail!(
            "{whence}: no auth_url; set openstack.auth_url or openstack.cloud in volsnap.toml, or OS_CLOUD, or OS_AUTH_URL and the other OS_* variables"
        ),
    };
    let user = |what: &str| -> anyhow::Result<NamedRef> {
        if let Some(id) = &o.user_id {
            return Ok(NamedRef::Id(id.clone()));
        }
        let Some(name) = &o.username else {
            bail!(
                "{whence}: {what} needs user_id, or username with user_domain_name/user_domain_id"
            );
        };
        let Some(domain) = domain(o.user_domain_id.clone(), o.user_domain_name.clone()) else {
            bail!("{whence}: username {name:?} needs user_domain_name or user_domain_id (often \"Default\")");
        };
        Ok(NamedRef::Name {
            name: name.clone(),
            domain,
        })
    };
    let project = |what: &str| -> anyhow::Result<NamedRef> {
        if let Some(id) = &o.project_id {
            return Ok(NamedRef::Id(id.clone()));
        }
        let Some(name) = &o.project_name else {
            bail!("{whence}: {what} needs a project: project_id, or project_name with project_domain_name/project_domain_id");
        };
        let Some(domain) = domain(o.project_domain_id.clone(), o.project_domain_name.clone())
        else {
            bail!("{whence}: project_name {name:?} needs project_domain_name or project_domain_id (often \"Default\")");
        };
        Ok(NamedRef::Name {
            name: name.clone(),
            domain,
        })
    };
    let auth_type = o
        .auth_type
        .unwrap_or(if o.application_credential_secret.is_some() {
            AuthType::ApplicationCredential
        } else if o.token.is_some() && o.password.is_none() {
            AuthType::Token
        } else {
            AuthType::Password
        });
    let method = match auth_type {
        AuthType::Password => {
            let Some(password) = o.password.clone() else {
                bail!("{whence}: password authentication needs a password (or set application_credential_id and _secret)");
            };
            AuthMethod::Password {
                user: user("password authentication")?,
                password,
                project: project("password authentication")?,
            }
        }
        AuthType::ApplicationCredential => {
            let Some(secret) = o.application_credential_secret.clone() else {
                bail!("{whence}: application credential authentication needs application_credential_secret");
            };
            let credential = match (&o.application_credential_id, &o.application_credential_name) {
                (Some(id), _) => AppCredRef::Id(id.clone()),
                (None, Some(name)) => AppCredRef::Name {
                    name: name.clone(),
                    user: user("an application credential given by name")?,
                },
                (None, None) => bail!(
                    "{whence}: application credential authentication needs application_credential_id (or _name with the user)"
                ),
            };
            AuthMethod::ApplicationCredential { credential, secret }
        }
        AuthType::Token => {
            let Some(token) = o.token.clone() else {
                bail!("{whence}: token authentication needs a token");
            };
            let project = match (&o.project_id, &o.project_name) {
                (None, None) => None,
                _ => Some(project("token authentication")?),
            };
            AuthMethod::Token { token, project }
        }
    };
    let endpoint =
        |value: &Option<String>, key: &str| value.as_deref().map(|v| parse_url(v, key)).transpose();
    let mut http = HttpOptions::default();
    if let Some(ConfigDuration(d)) = o.connect_timeout {
        http.connect_timeout = d;
    }
    if let Some(ConfigDuration(d)) = o.request_timeout {
        http.request_timeout = d;
    }
    http.insecure = o.insecure == Some(true);
    http.cacert = if http.insecure {
        None
    } else {
        o.cacert.clone()
    };
    Ok(AuthConfig {
        auth_url,
        method,
        region: o.region_name.clone(),
        interface: o.interface.unwrap_or_default(),
        block_storage_endpoint: endpoint(&o.block_storage_endpoint, "block_storage_endpoint")?,
        object_store_endpoint: endpoint(&o.object_store_endpoint, "object_store_endpoint")?,
        http,
        source,
    })
}

fn domain_json(d: &DomainRef) -> serde_json::Value {
    match d {
        DomainRef::Id(id) => json!({ "id": id }),
        DomainRef::Name(name) => json!({ "name": name }),
    }
}

fn named_json(r: &NamedRef) -> serde_json::Value {
    match r {
        NamedRef::Id(id) => json!({ "id": id }),
        NamedRef::Name { name, domain } => json!({ "name": name, "domain": domain_json(domain) }),
    }
}

/// The body of `POST /v3/auth/tokens`. It holds the secret: it is never logged.
fn auth_body(method: &AuthMethod) -> serde_json::Value {
    match method {
        AuthMethod::Password {
            user,
            password,
            project,
        } => {
            let mut user = named_json(user);
            user["password"] = json!(password.expose());
            json!({ "auth": {
                "identity": { "methods": ["password"], "password": { "user": user } },
                "scope": { "project": named_json(project) },
            }})
        }
        AuthMethod::ApplicationCredential { credential, secret } => {
            let mut cred = match credential {
                AppCredRef::Id(id) => json!({ "id": id }),
                AppCredRef::Name { name, user } => {
                    json!({ "name": name, "user": named_json(user) })
                }
            };
            cred["secret"] = json!(secret.expose());
            json!({ "auth": { "identity": {
                "methods": ["application_credential"],
                "application_credential": cred,
            }}})
        }
        AuthMethod::Token { token, project } => {
            let mut body = json!({ "auth": {
                "identity": { "methods": ["token"], "token": { "id": token.expose() } },
            }});
            if let Some(project) = project {
                body["auth"]["scope"] = json!({ "project": named_json(project) });
            }
            body
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct CatalogEntry {
    #[serde(rename = "type")]
    pub service_type: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Endpoint {
    pub interface: String,
    pub region_id: Option<String>,
    pub region: Option<String>,
    pub url: String,
}

impl Endpoint {
    fn region(&self) -> Option<&str> {
        self.region_id.as_deref().or(self.region.as_deref())
    }
}

#[derive(Debug, Deserialize)]
struct TokenBody {
    token: TokenInfo,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct TokenInfo {
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub catalog: Vec<CatalogEntry>,
    #[serde(default)]
    pub project: Option<IdName>,
    #[serde(default)]
    pub user: Option<IdName>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct IdName {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub domain: Option<Box<IdName>>,
}

impl IdName {
    fn is(&self, r: &NamedRef) -> bool {
        match r {
            NamedRef::Id(id) => &self.id == id,
            NamedRef::Name { name, domain } => {
                &self.name == name
                    && match (&self.domain, domain) {
                        (None, _) => true,
                        (Some(d), DomainRef::Id(id)) => &d.id == id,
                        (Some(d), DomainRef::Name(name)) => &d.name == name,
                    }
            }
        }
    }
}

/// `GET /v3/auth/tokens` on a token with itself: its scope and catalog.
/// This works for every token, including the delegated ones (from an
/// application credential or a trust) that Keystone refuses to exchange.
fn inspect_token(http: &Http, config: &AuthConfig, token: &Secret) -> Result<TokenInfo, Error> {
    let mut req = Request::get(config.tokens_url());
    let mut subject = reqwest::header::HeaderValue::from_str(token.expose()).map_err(|_| {
        Error::invalid(
            &req,
            "the token holds characters an HTTP header cannot carry".into(),
        )
    })?;
    subject.set_sensitive(true);
    req.headers.insert("x-subject-token", subject);
    let resp = http.send(&req, Some(token))?;
    let body: TokenBody = http::read_json(&req, resp)?;
    Ok(body.token)
}

/// A token for the configured method, with its scope and catalog: `POST
/// /v3/auth/tokens` (the token comes in `X-Subject-Token`), except for a
/// given token that already has the scope asked for, which is used as it is.
pub fn authenticate(http: &Http, config: &AuthConfig) -> Result<(Secret, TokenInfo), Error> {
    if let AuthMethod::Token { token, project } = &config.method {
        let info = inspect_token(http, config, token)?;
        let scoped = match (project, &info.project) {
            (None, _) => true,
            (Some(wanted), Some(has)) => has.is(wanted),
            (Some(_), None) => false,
        };
        if scoped {
            log::debug!(
                "using the given token as it is (project {}, expires {})",
                info.project.as_ref().map_or("none", |p| p.name.as_str()),
                info.expires_at.as_deref().unwrap_or("?")
            );
            return Ok((token.clone(), info));
        }
    }
    // Asking for a token twice is harmless: the request may be retried.
    let req = Request::new(Method::POST, config.tokens_url())
        .json(&auth_body(&config.method))
        .idempotent(true);
    let resp = http.send(&req, None)?;
    let token = resp
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(Secret::new);
    let id = http::request_id(resp.headers());
    let body: TokenBody = http::read_json(&req, resp)?;
    let Some(token) = token else {
        return Err(Error::decode(
            &req,
            reqwest::StatusCode::CREATED,
            "Keystone sent no X-Subject-Token header".into(),
            id,
        ));
    };
    log::debug!(
        "authenticated by {} at {} (user {}, project {}, token expires {})",
        config.method.describe(),
        config.auth_url,
        body.token.user.as_ref().map_or("?", |u| u.name.as_str()),
        body.token.project.as_ref().map_or("?", |p| p.name.as_str()),
        body.token.expires_at.as_deref().unwrap_or("?")
    );
    Ok((token, body.token))
}

/// An authenticated connection to one cloud: the HTTP client, the current
/// token and the catalog. Cheap to clone and shared between threads.
#[derive(Clone, Debug)]
pub struct Session {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: Http,
    /// `None` for a fixed token (no re-authentication possible).
    config: Option<AuthConfig>,
    state: RwLock<State>,
}

#[derive(Debug)]
struct State {
    token: Secret,
    info: TokenInfo,
}

impl Session {
    /// Authenticates with Keystone.
    pub fn connect(config: AuthConfig) -> anyhow::Result<Session> {
        let http = Http::new(&config.http)?;
        let (token, info) = authenticate(&http, &config).with_context(|| {
            format!(
                "cannot authenticate by {} (credentials from {})",
                config.method.describe(),
                config.source
            )
        })?;
        Ok(Session {
            inner: Arc::new(Inner {
                http,
                config: Some(config),
                state: RwLock::new(State { token, info }),
            }),
        })
    }

    /// A session with a fixed token and no catalog (services get explicit
    /// base URLs): for tests against mock servers, and nothing to re-auth with.
    pub fn with_token(http: Http, token: Secret) -> Session {
        Session {
            inner: Arc::new(Inner {
                http,
                config: None,
                state: RwLock::new(State {
                    token,
                    info: TokenInfo::default(),
                }),
            }),
        }
    }

    pub fn http(&self) -> &Http {
        &self.inner.http
    }

    pub fn token_info(&self) -> TokenInfo {
        self.state().info.clone()
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while holding the lock leaves a usable token behind.
        self.inner
            .state
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The current token (a [`Secret`]: it never prints itself).
    pub fn token(&self) -> Secret {
        self.state().token.clone()
    }

    /// Sends a request with the token; a 401 re-authenticates once and
    /// repeats the request, a second 401 is the error.
    pub fn send(&self, req: &Request) -> Result<Response, Error> {
        self.reauthorizing(req, |token| self.inner.http.send(req, Some(token)))
    }

    /// As [`send`](Self::send), the body to read as it arrives (see
    /// [`Http::send_for_body`]). `early`: the same request sent ahead by
    /// [`send_early`](Self::send_early).
    pub fn send_for_body(
        &self,
        req: &Request,
        early: Option<Early>,
    ) -> Result<(StatusCode, HeaderMap, BodyReader), Error> {
        let early = std::cell::Cell::new(early);
        self.reauthorizing(req, |token| {
            self.inner
                .http
                .send_for_body(req, Some(token), early.take())
        })
    }

    /// Sends `req` now, with the current token, for a
    /// [`send_for_body`](Self::send_for_body) to come (see
    /// [`Http::send_early`]).
    pub fn send_early(&self, req: &Request) -> Option<Early> {
        self.inner.http.send_early(req, Some(&self.token()))
    }

    fn reauthorizing<T>(
        &self,
        req: &Request,
        send: impl Fn(&Secret) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let token = self.token();
        match send(&token) {
            // No new login inside a deadline (the freeze window): Keystone's
            // round trip is not bounded by it. The token is checked fresh
            // before the window opens.
            Err(e)
                if e.status() == Some(reqwest::StatusCode::UNAUTHORIZED)
                    && req.deadline.is_none() =>
            {
                let Some(config) = &self.inner.config else {
                    return Err(e);
                };
                log::warn!("{e}; the token was refused, authenticating again once");
                self.reauthenticate(config, &token)?;
                send(&self.token())
            }
            other => other,
        }
    }

    /// Logs in again now if the token expires within `needed`: a request
    /// inside the freeze window does not re-authenticate (see `send`).
    pub fn ensure_fresh(&self, needed: Duration) -> Result<(), Error> {
        let (Some(config), Some(expires)) = (&self.inner.config, self.token_info().expires_at)
        else {
            return Ok(());
        };
        let Ok(expires) = expires.parse::<crate::time::Timestamp>() else {
            return Ok(());
        };
        let left = expires.seconds_since(crate::time::Timestamp::now());
        if left > needed.as_secs_f64() {
            return Ok(());
        }
        log::info!(
            "the token expires in {:.0} s: authenticating again before the freeze",
            left
        );
        self.reauthenticate(config, &self.token())
    }

    fn reauthenticate(&self, config: &AuthConfig, failed: &Secret) -> Result<(), Error> {
        let mut state = self
            .inner
            .state
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        if &state.token != failed {
            // Another thread renewed it meanwhile.
            return Ok(());
        }
        let (token, info) = authenticate(&self.inner.http, config)?;
        state.token = token;
        state.info = info;
        Ok(())
    }

    /// The base URL of a service: the config's override, else the catalog's
    /// entry for the region and interface.
    pub fn endpoint(&self, service: Service) -> anyhow::Result<Url> {
        let config = self.inner.config.as_ref();
        let overridden = config.and_then(|c| match service {
            Service::BlockStorage => c.block_storage_endpoint.clone(),
            Service::ObjectStore => c.object_store_endpoint.clone(),
        });
        if let Some(url) = overridden {
            return Ok(url);
        }
        let region = config.and_then(|c| c.region.as_deref());
        let interface = config.map(|c| c.interface).unwrap_or_default();
        let url = find_endpoint(&self.state().info.catalog, service, region, interface)?;
        parse_url(&url, &format!("the catalog's {} URL", service.name()))
    }
}

/// Picks a service's URL from the catalog, or says what the catalog has.
pub fn find_endpoint(
    catalog: &[CatalogEntry],
    service: Service,
    region: Option<&str>,
    interface: Interface,
) -> anyhow::Result<String> {
    let types = service.types();
    let entries: Vec<&CatalogEntry> = types
        .iter()
        .flat_map(|t| catalog.iter().filter(move |e| e.service_type == *t))
        .collect();
    if entries.is_empty() {
        let present: Vec<&str> = catalog.iter().map(|e| e.service_type.as_str()).collect();
        bail!(
            "the catalog has no {} service (looked for types {}; it has {}); set {}",
            service.name(),
            types.join(", "),
            if present.is_empty() {
                "nothing".to_string()
            } else {
                present.join(", ")
            },
            service.config_key()
        );
    }
    let in_region = |ep: &&Endpoint| match region {
        Some(r) => ep.region() == Some(r),
        None => true,
    };
    for entry in &entries {
        let mut found = entry
            .endpoints
            .iter()
            .filter(in_region)
            .filter(|ep| ep.interface == interface.name());
        if let Some(ep) = found.next() {
            if region.is_none() {
                if let Some(other) = found.find(|o| o.region() != ep.region()) {
                    log::info!(
                        "no region_name set; using {} in region {} (the catalog also has region {})",
                        entry.service_type,
                        ep.region().unwrap_or("?"),
                        other.region().unwrap_or("?")
                    );
                }
            }
            return Ok(ep.url.clone());
        }
    }
    let mut regions: Vec<&str> = entries
        .iter()
        .flat_map(|e| e.endpoints.iter().filter_map(Endpoint::region))
        .collect();
    regions.sort_unstable();
    regions.dedup();
    let in_wanted_region: Vec<String> = entries
        .iter()
        .flat_map(|e| e.endpoints.iter().filter(in_region))
        .map(|ep| ep.interface.clone())
        .collect();
    match region {
        Some(r) if in_wanted_region.is_empty() => bail!(
            "the catalog has no {} endpoint in region {r:?}; regions in the catalog: {}",
            service.name(),
            if regions.is_empty() {
                "none".to_string()
            } else {
                regions.join(", ")
            }
        ),
        _ => bail!(
            "the catalog has no {} endpoint with interface {}{}; interfaces there: {}",
            service.name(),
            interface.name(),
            region
                .map(|r| format!(" in region {r:?}"))
                .unwrap_or_default(),
            in_wanted_region.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests;
