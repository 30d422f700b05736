//! Where the configuration comes from: a YAML file, then the environment.

use super::{Config, ConfigError};
use std::path::{Path, PathBuf};

impl Config {
    /// Loads the configuration the way `chatapp serve` does: the explicit path,
    /// else `CONFIG_PATH` (a file, or a directory holding `config.yaml`), else
    /// `./config.yaml` when present, else defaults; then env overrides.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with(explicit, |name| std::env::var(name).ok())
    }

    /// [`Config::load`] with the environment passed in, so tests need not
    /// mutate the process environment.
    pub fn load_with(
        explicit: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut config = match resolve_path(explicit, &env)? {
            Some(path) => Self::from_file(&path)?,
            None => Config::default(),
        };
        config.apply_env(&env)?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
        })?;
        Self::from_yaml(&text)
    }

    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_yaml::from_str(text).map_err(|e| {
            // serde_yaml reports "key.path: problem at line L column C"; keep it on one line.
            let msg = e.to_string().replace('\n', " ");
            let (key, rest) = match msg.split_once(": ") {
                Some((k, r)) if !k.contains(' ') => (k.to_string(), r.to_string()),
                _ => ("<file>".to_string(), msg.clone()),
            };
            ConfigError::new(key, rest)
        })
    }

    fn apply_env(&mut self, env: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        // An empty variable (e.g. `CHATAPP_TOKEN_KEY=` in a compose file) counts as unset.
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = env("PORT") {
            self.port = parse_env("PORT", &v, "a port number 1-65535")?;
        }
        if let Some(v) = env("CHATAPP_HOST") {
            self.host = v;
        }
        if let Some(v) = env("DATABASE_URL") {
            self.database.url = v;
        }
        if let Some(v) = env("CHATAPP_DB_POOL_SIZE") {
            self.database.pool_size = parse_env("CHATAPP_DB_POOL_SIZE", &v, "an integer 1-1000")?;
        }
        if let Some(v) = env("CHATAPP_TOKEN_KEY") {
            self.auth.token_key = Some(v);
        }
        if let Some(v) = env("CHATAPP_BCRYPT_COST") {
            self.auth.bcrypt_cost = parse_env("CHATAPP_BCRYPT_COST", &v, "an integer 4-31")?;
        }
        if let Some(v) = env("CHATAPP_LOG_LEVEL") {
            self.log.level = v;
        }
        if let Some(v) = env("CHATAPP_LOG_FORMAT") {
            self.log.format = v;
        }
        Ok(())
    }
}

fn resolve_path(
    explicit: Option<&Path>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<PathBuf>, ConfigError> {
    if let Some(path) = explicit {
        return Ok(Some(path.to_path_buf()));
    }
    if let Some(raw) = env("CONFIG_PATH").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(raw);
        if path.is_dir() {
            let file = path.join("config.yaml");
            if !file.is_file() {
                return Err(ConfigError::new(
                    "CONFIG_PATH",
                    format!("directory {} holds no config.yaml", path.display()),
                ));
            }
            return Ok(Some(file));
        }
        if !path.is_file() {
            return Err(ConfigError::new(
                "CONFIG_PATH",
                format!("{} is neither a file nor a directory", path.display()),
            ));
        }
        return Ok(Some(path));
    }
    let local = PathBuf::from("config.yaml");
    Ok(local.is_file().then_some(local))
}

fn parse_env<T: std::str::FromStr>(
    name: &str,
    value: &str,
    accepted: &str,
) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| ConfigError::new(name, format!("`{value}` is not {accepted}")))
}
