//! Configuration: embedded defaults, then an optional TOML file, then `REPIT_<SECTION>__<KEY>`
//! environment variables, in that order of precedence (last wins).
//!
//! Everything is validated before anything starts, and every problem is reported with the key (and
//! the file or variable) it came from, so a bad deployment fails at once with a message an operator
//! can act on instead of failing later at the first request.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Prefix of every environment override; `REPIT_SERVER__LISTEN` sets `server.listen`.
pub const ENV_PREFIX: &str = "REPIT_";
/// Separator between the section and the key in an environment override.
pub const ENV_SEPARATOR: &str = "__";

/// The whole configuration of one `repitd` process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub storage: StorageConfig,
    pub nats: NatsConfig,
    pub projections: ProjectionsConfig,
    pub auth: AuthConfig,
    pub gateway: GatewayConfig,
}

/// Access tokens: who issues them, for whom, and the key that seals the signing keys; the bot's
/// credential; the rate limits of the public (login) RPCs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The `iss` claim of access tokens.
    pub issuer: String,
    /// The `aud` claim every service checks.
    pub audience: String,
    /// The key-encryption key that seals the token signing keys in the event store:
    /// `<id>:<base64 of 32 bytes>` in a file readable only by repitd. Empty:
    /// `<data_dir>/signing-kek`, created on first start. Every user-service replica needs the same.
    pub key_encryption_key_file: String,
    /// Where a process that does not run the user service fetches the keys that verify access
    /// tokens (`GetPublicKeys`), e.g. `http://user:50051`. Empty: the user service runs in this
    /// process and its key ring is read directly. Required by processes serving any other
    /// service without the user service.
    pub user_service_url: String,
    /// The Telegram bot's credential (user.proto `TelegramBotAssertion.bot_credential`), usually
    /// from `REPIT_AUTH__BOT_CREDENTIAL`. A secret: never serialised (`repitd config` omits it)
    /// nor logged. Empty with an empty `bot_credential_file`: no bot can assert a Telegram
    /// identity (every assertion is UNAUTHENTICATED).
    #[serde(skip_serializing)]
    pub bot_credential: String,
    /// A file holding the bot credential (trailing whitespace ignored); used when
    /// `bot_credential` is empty.
    pub bot_credential_file: String,
    /// The bot's Telegram username, for deep links `https://t.me/<bot_username>?start=<code>`.
    pub bot_username: String,
    /// Accounts signing up with one of these emails also become platform admins (the first
    /// operator of an installation has no one to grant them the role).
    pub platform_admin_emails: Vec<String>,
    /// Public RPCs (login, sign-up, refresh, invites) per client address: burst size…
    pub rate_limit_address_burst: u32,
    /// …and tokens added back per minute.
    pub rate_limit_address_per_minute: u32,
    /// Public RPCs per account identifier (email, Telegram id): burst size…
    pub rate_limit_account_burst: u32,
    /// …and tokens added back per minute.
    pub rate_limit_account_per_minute: u32,
}

impl fmt::Debug for AuthConfig {
    // By hand, so that the bot credential never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("key_encryption_key_file", &self.key_encryption_key_file)
            .field("user_service_url", &self.user_service_url)
            .field(
                "bot_credential",
                &if self.bot_credential.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("bot_credential_file", &self.bot_credential_file)
            .field("bot_username", &self.bot_username)
            .field("platform_admin_emails", &self.platform_admin_emails)
            .field("rate_limit_address_burst", &self.rate_limit_address_burst)
            .field(
                "rate_limit_address_per_minute",
                &self.rate_limit_address_per_minute,
            )
            .field("rate_limit_account_burst", &self.rate_limit_account_burst)
            .field(
                "rate_limit_account_per_minute",
                &self.rate_limit_account_per_minute,
            )
            .finish()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: "repit".to_owned(),
            audience: "repit".to_owned(),
            key_encryption_key_file: String::new(),
            user_service_url: String::new(),
            bot_credential: String::new(),
            bot_credential_file: String::new(),
            bot_username: "RepitBot".to_owned(),
            platform_admin_emails: Vec::new(),
            rate_limit_address_burst: 60,
            rate_limit_address_per_minute: 60,
            rate_limit_account_burst: 10,
            rate_limit_account_per_minute: 5,
        }
    }
}

impl AuthConfig {
    /// The key-encryption key file with the embedded default filled in.
    pub fn key_encryption_key_file(&self, storage: &StorageConfig) -> PathBuf {
        if self.key_encryption_key_file.is_empty() {
            storage.data_dir.join("signing-kek")
        } else {
            PathBuf::from(&self.key_encryption_key_file)
        }
    }

    /// The bot credential: `bot_credential`, else the contents of `bot_credential_file`, else
    /// none.
    pub fn bot_credential(&self) -> std::io::Result<Option<String>> {
        if !self.bot_credential.is_empty() {
            return Ok(Some(self.bot_credential.clone()));
        }
        if self.bot_credential_file.is_empty() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&self.bot_credential_file)?;
        let text = text.trim_end();
        Ok((!text.is_empty()).then(|| text.to_owned()))
    }
}

/// Where data lives. The defaults are files under `data_dir`, so `repitd` runs with nothing
/// installed; a cluster points the URLs at its servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory for the embedded SQLite files (created when missing).
    pub data_dir: PathBuf,
    /// The event store: empty for `<data_dir>/events.db` (SQLite), or `sqlite://…`,
    /// `postgres://…`, `esdb://…` / `kurrentdb://…` (KurrentDB).
    pub event_store_url: String,
    /// The read-model database: empty for `<data_dir>/read-models.db` (SQLite), or
    /// `sqlite://…`, `postgres://…` (the tables analysts query).
    pub read_model_url: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("repit-data"),
            event_store_url: String::new(),
            read_model_url: String::new(),
        }
    }
}

impl StorageConfig {
    /// The event store URL with the embedded default filled in.
    pub fn event_store(&self) -> String {
        if self.event_store_url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("events.db").display())
        } else {
            self.event_store_url.clone()
        }
    }

    /// The read-model URL with the embedded default filled in.
    pub fn read_models(&self) -> String {
        if self.read_model_url.is_empty() {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("read-models.db").display()
            )
        } else {
            self.read_model_url.clone()
        }
    }
}

/// NATS JetStream, the event fan-out of the distributed mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// `nats://host:port`; empty: no NATS (embedded mode).
    pub url: String,
    /// The JetStream stream the relay fills.
    pub stream: String,
    /// Subject prefix: events go to `<prefix>.<service>.<EventName>`.
    pub subject_prefix: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            stream: "REPIT_EVENTS".to_owned(),
            subject_prefix: "repit.events".to_owned(),
        }
    }
}

/// Where projections read events from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedKind {
    /// JetStream when `nats.url` is set, else the store's own subscription.
    Auto,
    /// The event store's catch-up subscription (embedded).
    Store,
    /// The JetStream stream filled by the relay (distributed).
    Jetstream,
}

/// The projection runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectionsConfig {
    pub feed: FeedKind,
    /// The most events applied in one transaction.
    pub batch_size: usize,
}

impl Default for ProjectionsConfig {
    fn default() -> Self {
        Self {
            feed: FeedKind::Auto,
            batch_size: 512,
        }
    }
}

impl ProjectionsConfig {
    /// Whether projections read from JetStream, given the NATS settings.
    pub fn uses_jetstream(&self, nats: &NatsConfig) -> bool {
        match self.feed {
            FeedKind::Auto => !nats.url.is_empty(),
            FeedKind::Store => false,
            FeedKind::Jetstream => true,
        }
    }
}

/// The gRPC server every target is mounted on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port (the chosen address is logged).
    pub listen: SocketAddr,
    /// How long in-flight requests may run after SIGINT/SIGTERM before the process exits anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Structured logging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter directives, e.g. `info` or `info,repit_lesson=debug`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written to standard output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Why the configuration was refused. Each problem names its key and where the value came from.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    problems: Vec<String>,
}

impl ConfigError {
    fn single(problem: String) -> Self {
        Self {
            problems: vec![problem],
        }
    }

    /// One line per problem.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.problems.join("; "))
    }
}

impl Config {
    /// Loads the embedded defaults, then `file` (which must exist when given), then the process
    /// environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, Env::prefixed(ENV_PREFIX))
    }

    fn load_from(file: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let env = env
            // Only `REPIT_<SECTION>__<KEY>` names are configuration; other `REPIT_` variables
            // (REPIT_TARGET, REPIT_CONFIG, test-suite URLs) belong to the CLI or the tests.
            .filter(|key| key.as_str().contains(ENV_SEPARATOR))
            .split(ENV_SEPARATOR);
        let figment = Self::base(file)?.merge(env);
        Self::extract(&figment)
    }

    fn base(file: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            check_readable(path)?;
            figment = figment.merge(Toml::file_exact(path));
        }
        Ok(figment)
    }

    fn extract(figment: &Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(|errors| ConfigError {
            problems: errors.into_iter().map(|e| describe(&e)).collect(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            problems.push(format!(
                "log.level: `{}` is not a valid filter: {e}",
                self.log.level
            ));
        }
        if self.server.shutdown_grace.is_zero() || self.server.shutdown_grace > MAX_GRACE {
            problems.push(format!(
                "server.shutdown_grace: must be between 1ms and {}, got {}",
                humantime_serde::re::humantime::format_duration(MAX_GRACE),
                humantime_serde::re::humantime::format_duration(self.server.shutdown_grace),
            ));
        }
        let keys_url = &self.auth.user_service_url;
        let accepted = keys_url.is_empty()
            || keys_url.starts_with("http://")
            || keys_url.starts_with("https://");
        if !accepted {
            problems.push(format!(
                "auth.user_service_url: `{keys_url}` must start with http:// or https://"
            ));
        }
        let store = self.storage.event_store();
        if ![
            "sqlite:",
            "postgres:",
            "postgresql:",
            "esdb:",
            "esdb+discover:",
            "kurrentdb:",
            "kurrentdb+discover:",
        ]
        .iter()
        .any(|scheme| store.starts_with(scheme))
        {
            problems.push(format!(
                "storage.event_store_url: `{store}` must start with sqlite:, postgres:, esdb: or kurrentdb:"
            ));
        }
        let read = self.storage.read_models();
        if !["sqlite:", "postgres:", "postgresql:"]
            .iter()
            .any(|s| read.starts_with(s))
        {
            problems.push(format!(
                "storage.read_model_url: `{read}` must start with sqlite: or postgres:"
            ));
        }
        if self.projections.feed == FeedKind::Jetstream && self.nats.url.is_empty() {
            problems.push("projections.feed: `jetstream` needs nats.url".to_owned());
        }
        if !self.nats.url.is_empty() && !self.nats.url.starts_with("nats://") {
            problems.push(format!(
                "nats.url: `{}` must start with nats://",
                self.nats.url
            ));
        }
        if self.auth.issuer.is_empty() || self.auth.audience.is_empty() {
            problems.push("auth.issuer / auth.audience: must not be empty".to_owned());
        }
        if !self.auth.bot_credential.is_empty() && self.auth.bot_credential.len() < 16 {
            problems.push("auth.bot_credential: must be at least 16 characters".to_owned());
        }
        if !self
            .auth
            .bot_username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || self.auth.bot_username.is_empty()
        {
            problems.push("auth.bot_username: letters, digits and _ only".to_owned());
        }
        if [
            self.auth.rate_limit_address_burst,
            self.auth.rate_limit_address_per_minute,
            self.auth.rate_limit_account_burst,
            self.auth.rate_limit_account_per_minute,
        ]
        .contains(&0)
        {
            problems.push("auth.rate_limit_*: must be at least 1".to_owned());
        }
        if self.projections.batch_size == 0 || self.projections.batch_size > 10_000 {
            problems.push("projections.batch_size: must be 1..=10000".to_owned());
        }
        self.gateway.check(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The effective configuration as TOML, for `repitd config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

const MAX_GRACE: Duration = Duration::from_secs(600);

pub use gateway::{GATEWAY_UPSTREAM_NAMES, GatewayConfig, RateLimitConfig};

/// The `gateway` section, kept in its own module so the gateway's settings and their rules read
/// together (and merge apart from the other sections).
mod gateway {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::{Deserialize, Serialize};

    /// The names an upstream may have: the services `repitd --target` runs (the gateway itself
    /// is never an upstream).
    pub const GATEWAY_UPSTREAM_NAMES: [&str; 9] = [
        "user",
        "student",
        "tutor",
        "lesson",
        "homework",
        "payment",
        "material",
        "notification",
        "analytics",
    ];

    /// The API gateway (PRODUCT.md §10, ADR 13): where each service is, and the edge policies
    /// (rate limit, load shedding, deadlines, CORS). The policies also apply in-process when the
    /// gateway runs with the services (`--target all`).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct GatewayConfig {
        /// Upstream URL per service name (`lesson = "http://lesson:50051"`); a service that is
        /// neither listed nor served by this process is not routed (UNIMPLEMENTED).
        pub upstreams: BTreeMap<String, String>,
        /// Calls in flight at which new ones are refused at once (RESOURCE_EXHAUSTED, OVERLOADED).
        pub concurrency_limit: u32,
        /// The deadline of a call that sets no `grpc-timeout`.
        #[serde(with = "humantime_serde")]
        pub default_deadline: Duration,
        /// Longer caller deadlines are cut to this (streaming `Watch…`, `Upload…`, `Download…` methods excepted).
        #[serde(with = "humantime_serde")]
        pub max_deadline: Duration,
        /// How long connecting to an upstream may take before the call is UNAVAILABLE.
        #[serde(with = "humantime_serde")]
        pub connect_timeout: Duration,
        /// How often each upstream's gRPC health is probed; `0s`: never (health is then only
        /// what forwarded calls see).
        #[serde(with = "humantime_serde")]
        pub health_check_interval: Duration,
        /// Browser origins allowed to call through gRPC-web (`https://app.example.com`); `*`
        /// allows any. Empty: no cross-origin browser calls.
        pub cors_allowed_origins: Vec<String>,
        pub rate_limit: RateLimitConfig,
    }

    impl Default for GatewayConfig {
        fn default() -> Self {
            Self {
                upstreams: BTreeMap::new(),
                concurrency_limit: 1024,
                default_deadline: Duration::from_secs(30),
                max_deadline: Duration::from_secs(300),
                connect_timeout: Duration::from_secs(2),
                health_check_interval: Duration::from_secs(10),
                cors_allowed_origins: Vec::new(),
                rate_limit: RateLimitConfig::default(),
            }
        }
    }

    /// The per-caller token bucket: each caller (user id, or client address when anonymous)
    /// may make `burst` calls at once and `refill_tokens` more every `refill_period`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct RateLimitConfig {
        /// Off: no caller is limited (shedding still applies).
        pub enabled: bool,
        pub burst: u32,
        pub refill_tokens: u32,
        #[serde(with = "humantime_serde")]
        pub refill_period: Duration,
        /// Most callers tracked at once; bounds the limiter's memory (about 100 bytes each).
        pub max_tracked_callers: u32,
    }

    impl Default for RateLimitConfig {
        fn default() -> Self {
            Self {
                enabled: true,
                burst: 200,
                refill_tokens: 100,
                refill_period: Duration::from_secs(1),
                max_tracked_callers: 100_000,
            }
        }
    }

    impl GatewayConfig {
        pub(super) fn check(&self, problems: &mut Vec<String>) {
            for (name, url) in &self.upstreams {
                if !GATEWAY_UPSTREAM_NAMES.contains(&name.as_str()) {
                    problems.push(format!(
                        "gateway.upstreams.{name}: not a service; expected one of {}",
                        GATEWAY_UPSTREAM_NAMES.join(", ")
                    ));
                }
                let valid = url
                    .strip_prefix("http://")
                    .or_else(|| url.strip_prefix("https://"))
                    .is_some_and(|rest| !rest.is_empty())
                    && url.parse::<http::Uri>().is_ok();
                if !valid {
                    problems.push(format!(
                        "gateway.upstreams.{name}: `{url}` must be an http:// or https:// URL"
                    ));
                }
            }
            if self.concurrency_limit == 0 {
                problems.push("gateway.concurrency_limit: must be at least 1".to_owned());
            }
            if self.default_deadline.is_zero() || self.max_deadline.is_zero() {
                problems.push(
                    "gateway.default_deadline / gateway.max_deadline: must be positive".to_owned(),
                );
            } else if self.default_deadline > self.max_deadline {
                problems.push(
                    "gateway.default_deadline: must not exceed gateway.max_deadline".to_owned(),
                );
            }
            if self.connect_timeout.is_zero() {
                problems.push("gateway.connect_timeout: must be positive".to_owned());
            }
            for origin in &self.cors_allowed_origins {
                let valid = origin == "*"
                    || ((origin.starts_with("http://") || origin.starts_with("https://"))
                        && !origin.ends_with('/')
                        && http::HeaderValue::from_str(origin).is_ok());
                if !valid {
                    problems.push(format!(
                        "gateway.cors_allowed_origins: `{origin}` must be `*` or scheme://host[:port] without a trailing slash"
                    ));
                }
            }
            let limit = &self.rate_limit;
            if limit.burst == 0 || limit.refill_tokens == 0 || limit.refill_period.is_zero() {
                problems.push(
                    "gateway.rate_limit: burst, refill_tokens and refill_period must be positive"
                        .to_owned(),
                );
            }
            if limit.max_tracked_callers < 16 {
                problems
                    .push("gateway.rate_limit.max_tracked_callers: must be at least 16".to_owned());
            }
        }
    }
}

fn check_readable(path: &Path) -> Result<(), ConfigError> {
    std::fs::metadata(path).map(|_| ()).map_err(|e| {
        ConfigError::single(format!(
            "config file {}: {e}",
            PathBuf::from(path).display()
        ))
    })
}

/// Renders one figment error as `<key>: <what is wrong> (in <source>)`.
fn describe(error: &figment::Error) -> String {
    let path = &error.path;
    let key = if path.is_empty() {
        "(top level)".to_owned()
    } else {
        path.join(".")
    };
    let source = error
        .metadata
        .as_ref()
        .map(|meta| match &meta.source {
            Some(figment::Source::File(path)) => format!("file {}", path.display()),
            _ if meta.name.contains("environment") => {
                format!("environment variable {}", env_name(path))
            }
            _ => meta.name.to_string(),
        })
        .unwrap_or_else(|| "configuration".to_owned());
    format!("{key}: {} (from {source})", error.kind)
}

/// The environment variable that sets `path`, e.g. `REPIT_SERVER__LISTEN` for `server.listen`.
pub fn env_name(path: &[String]) -> String {
    format!("{ENV_PREFIX}{}", path.join(ENV_SEPARATOR).to_uppercase())
}

#[cfg(test)]
// figment::Jail fixes the closure's error type to figment::Error, which is large; not ours to shrink.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn problems(result: Result<Config, ConfigError>) -> String {
        match result {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_are_valid_and_need_no_file() {
        Jail::expect_with(|_| {
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config, Config::default());
            Ok(())
        });
    }

    #[test]
    fn file_then_environment_override_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "repit.toml",
                "[server]\nlisten = \"0.0.0.0:7000\"\n[log]\nformat = \"json\"\n",
            )?;
            jail.set_env("REPIT_SERVER__LISTEN", "127.0.0.1:7001");
            let config = Config::load(Some(Path::new("repit.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(
                config.server.listen,
                SocketAddr::from(([127, 0, 0, 1], 7001))
            );
            assert_eq!(config.log.format, LogFormat::Json);
            Ok(())
        });
    }

    #[test]
    fn other_repit_variables_are_not_configuration() {
        Jail::expect_with(|jail| {
            jail.set_env("REPIT_TARGET", "lesson");
            jail.set_env("REPIT_KURRENTDB_URL", "esdb://localhost:2113");
            assert!(Config::load(None).is_ok());
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_in_the_file_names_the_key_and_the_file() {
        Jail::expect_with(|jail| {
            jail.create_file("repit.toml", "[server]\nlisten = \"not an address\"\n")?;
            let message = problems(Config::load(Some(Path::new("repit.toml"))));
            assert!(message.contains("server.listen"), "{message}");
            assert!(message.contains("repit.toml"), "{message}");
            Ok(())
        });
    }

    #[test]
    fn an_unknown_key_in_the_file_is_refused_by_name() {
        Jail::expect_with(|jail| {
            jail.create_file("repit.toml", "[server]\nlisen = \"127.0.0.1:1\"\n")?;
            let message = problems(Config::load(Some(Path::new("repit.toml"))));
            assert!(message.contains("server.lisen"), "{message}");
            Ok(())
        });
    }

    #[test]
    fn a_bad_environment_value_names_the_variable() {
        Jail::expect_with(|jail| {
            jail.set_env("REPIT_SERVER__SHUTDOWN_GRACE", "soon");
            let message = problems(Config::load(None));
            assert!(message.contains("server.shutdown_grace"), "{message}");
            assert!(
                message.contains("REPIT_SERVER__SHUTDOWN_GRACE"),
                "{message}"
            );
            Ok(())
        });
    }

    #[test]
    fn a_missing_file_is_an_error_not_a_silent_default() {
        Jail::expect_with(|_| {
            let message = problems(Config::load(Some(Path::new("nowhere.toml"))));
            assert!(message.contains("nowhere.toml"), "{message}");
            Ok(())
        });
    }

    #[test]
    fn gateway_upstreams_and_limits_come_from_the_environment_and_are_checked() {
        Jail::expect_with(|jail| {
            jail.set_env("REPIT_GATEWAY__UPSTREAMS__USER", "http://127.0.0.1:7001");
            jail.set_env("REPIT_GATEWAY__RATE_LIMIT__BURST", "3");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                config.gateway.upstreams.get("user").map(String::as_str),
                Some("http://127.0.0.1:7001")
            );
            assert_eq!(config.gateway.rate_limit.burst, 3);
            jail.set_env("REPIT_GATEWAY__UPSTREAMS__BILLING", "http://x:1");
            jail.set_env("REPIT_GATEWAY__UPSTREAMS__LESSON", "lesson:50051");
            jail.set_env("REPIT_GATEWAY__DEFAULT_DEADLINE", "10m");
            let message = problems(Config::load(None));
            assert!(message.contains("gateway.upstreams.billing"), "{message}");
            assert!(message.contains("gateway.upstreams.lesson"), "{message}");
            assert!(message.contains("gateway.default_deadline"), "{message}");
            Ok(())
        });
    }

    #[test]
    fn semantic_rules_are_checked_after_parsing() {
        Jail::expect_with(|jail| {
            jail.set_env("REPIT_LOG__LEVEL", "info,[[[");
            jail.set_env("REPIT_SERVER__SHUTDOWN_GRACE", "0s");
            let message = problems(Config::load(None));
            assert!(message.contains("log.level"), "{message}");
            assert!(message.contains("server.shutdown_grace"), "{message}");
            Ok(())
        });
    }
}
