//! [`ConfigBuilder`]: preset -> file -> `--set` overrides, merged leaf by leaf against the schema.
use crate::{preset_names, Config, ConfigError, Result, PRESETS};
use std::path::{Path, PathBuf};
use toml::Value;

/// Assembles a [`Config`] from layers; see the crate doc.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    schema: Value,
    current: Value,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigBuilder {
    /// Starts from the built-in defaults.
    pub fn new() -> Self {
        let schema = Value::try_from(Config::default()).expect("defaults serialize");
        Self { current: schema.clone(), schema }
    }

    /// Merges a shipped preset.
    pub fn preset(&mut self, name: &str) -> Result<&mut Self> {
        let text = PRESETS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .ok_or_else(|| ConfigError::UnknownPreset { name: name.into(), available: preset_names().join(", ") })?;
        self.merge_str(text, &PathBuf::from(format!("configs/{name}.toml")))?;
        Ok(self)
    }

    /// Merges a TOML file.
    pub fn file(&mut self, path: &Path) -> Result<&mut Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.into(), source })?;
        self.merge_str(&text, path)?;
        Ok(self)
    }

    /// Merges TOML text; `origin` names it in errors.
    pub fn merge_str(&mut self, text: &str, origin: &Path) -> Result<&mut Self> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: origin.into(), message: e.to_string() })?;
        let mut leaves = Vec::new();
        flatten(&Value::Table(table), String::new(), &mut leaves);
        for (key, value) in leaves {
            self.set_value(&key, value)?;
        }
        Ok(self)
    }

    /// Applies one `dotted.key=value` override. The value is parsed as a TOML value
    /// (`0.1`, `true`, `[2048, 2048]`, `"x"`); anything that is not valid TOML is taken as a
    /// bare string, so `model.arch=cifar-resnet18` works.
    pub fn set(&mut self, assignment: &str) -> Result<&mut Self> {
        let (key, raw) = assignment.split_once('=').ok_or_else(|| ConfigError::MalformedOverride(assignment.into()))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(ConfigError::MalformedOverride(assignment.into()));
        }
        let raw = raw.trim();
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| Value::String(raw.to_string()));
        self.set_value(key, value)?;
        Ok(self)
    }

    /// Sets one leaf, checking the key against the schema and the whole tree against the types.
    pub fn set_value(&mut self, key: &str, value: Value) -> Result<&mut Self> {
        let parts: Vec<&str> = key.split('.').collect();
        // Walk the schema: every segment must exist, and the leaf must not be a table.
        let mut schema = &self.schema;
        for (i, part) in parts.iter().enumerate() {
            let table = schema.as_table().ok_or_else(|| ConfigError::UnknownKey {
                key: key.into(),
                hint: format!("`{}` is a value, not a section", parts[..i].join(".")),
            })?;
            schema = table.get(*part).ok_or_else(|| ConfigError::UnknownKey {
                key: key.into(),
                hint: table.keys().cloned().collect::<Vec<_>>().join(", "),
            })?;
        }
        if schema.is_table() {
            return Err(ConfigError::BadValue {
                key: key.into(),
                value: value.to_string(),
                reason: "this is a section; set its keys instead".into(),
            });
        }
        let value = coerce(schema, value, key)?;
        let mut next = self.current.clone();
        let mut slot = &mut next;
        for part in &parts[..parts.len() - 1] {
            slot = slot.as_table_mut().expect("checked above").get_mut(*part).expect("checked above");
        }
        slot.as_table_mut().expect("checked above").insert(parts[parts.len() - 1].into(), value.clone());
        // Enum variants and nested types are checked by deserializing the whole tree.
        if let Err(e) = next.clone().try_into::<Config>() {
            return Err(ConfigError::BadValue {
                key: key.into(),
                value: value.to_string(),
                reason: e.message().trim().to_string(),
            });
        }
        self.current = next;
        Ok(self)
    }

    /// The assembled, validated config.
    pub fn build(&self) -> Result<Config> {
        let cfg: Config = self.current.clone().try_into().map_err(|e: toml::de::Error| ConfigError::BadValue {
            key: "<config>".into(),
            value: String::new(),
            reason: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }
}

fn flatten(v: &Value, prefix: String, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(v, key, out);
            }
        }
        other => out.push((prefix, other.clone())),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "a boolean (true/false)",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
    }
}

/// Makes `value` the schema's type where that is lossless (integer -> float), else errors.
fn coerce(schema: &Value, value: Value, key: &str) -> Result<Value> {
    let bad = |value: &Value| ConfigError::BadValue {
        key: key.into(),
        value: value.to_string(),
        reason: format!("expected {}, got {}", type_name(schema), type_name(value)),
    };
    match (schema, value) {
        (Value::Float(_), Value::Integer(i)) => Ok(Value::Float(i as f64)),
        (Value::Integer(_), Value::Integer(i)) if i < 0 => Err(ConfigError::OutOfRange {
            key: key.into(),
            value: i.to_string(),
            allowed: "a non-negative integer".into(),
        }),
        (Value::Array(s), Value::Array(items)) => {
            let elem = s.first();
            items
                .into_iter()
                .map(|it| match elem {
                    Some(e) => coerce(e, it, key),
                    None => Ok(it),
                })
                .collect::<Result<Vec<_>>>()
                .map(Value::Array)
        }
        (s, v) if std::mem::discriminant(s) == std::mem::discriminant(&v) => Ok(v),
        (_, v) => Err(bad(&v)),
    }
}
