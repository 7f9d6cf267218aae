//! [`ManifestError`]: one error, naming the document, the field path and
//! what is wrong with it.

use std::fmt;

/// An invalid manifest.
///
/// Displays as `<field>: <message>`, prefixed with `document <n>: ` when the
/// text held several documents, e.g.
/// `document 2: spec.resources.memory: "64Q" is not a quantity (expected e.g. 64Mi, 1Gi, 500M)`.
/// Errors about the text as a whole (YAML syntax, no documents) have an empty
/// `field` and display just the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Rendered::new(*.document, .field, .message))]
pub struct ManifestError {
    /// 1-based position of the YAML document in the text; set only when the
    /// text contains more than one (non-empty) document.
    pub document: Option<usize>,
    /// Path of the offending field, e.g. `spec.routes[0].path`; empty when
    /// the error is about the whole text.
    pub field: String,
    /// What is wrong, e.g. `must start with "/"`.
    pub message: String,
}

struct Rendered<'a> {
    document: Option<usize>,
    field: &'a str,
    message: &'a str,
}

impl<'a> Rendered<'a> {
    fn new(document: Option<usize>, field: &'a str, message: &'a str) -> Self {
        Rendered { document, field, message }
    }
}

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(document) = self.document {
            write!(f, "document {document}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(self.message)
    }
}

impl ManifestError {
    /// An error about `field` (no document number).
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ManifestError { document: None, field: field.into(), message: message.into() }
    }

    /// The same error, attributed to the 1-based YAML document `document`.
    #[must_use]
    pub fn in_document(mut self, document: Option<usize>) -> Self {
        self.document = document;
        self
    }

    /// A YAML syntax (or structure) error; the message says where.
    pub(crate) fn syntax(err: &serde_yaml_ng::Error) -> Self {
        let mut message = format!("invalid YAML: {err}");
        if let Some(location) = err.location()
            && !message.contains(" at line ")
        {
            message.push_str(&format!(" at line {} column {}", location.line(), location.column()));
        }
        ManifestError::new("", message)
    }

    /// A type error or unknown field reported by serde while reading a
    /// document, located by `serde_path_to_error`.
    pub(crate) fn from_serde(err: &serde_path_to_error::Error<serde_yaml_ng::Error>) -> Self {
        // Map keys are quoted as the validation phase quotes them
        // (`spec.env["a.b"]`), so one key has one path whichever phase
        // reports it.
        let mut path = String::new();
        for segment in err.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => path.push_str(&format!("[{index}]")),
                serde_path_to_error::Segment::Map { key } => path = key_path(&path, key),
                serde_path_to_error::Segment::Enum { variant } => path = key_path(&path, variant),
                serde_path_to_error::Segment::Unknown => path = join(&path, "?"),
            }
        }
        let display = err.path().to_string();
        let display = if display == "." { String::new() } else { display };
        let mut message = strip_path_prefix(&err.inner().to_string(), &display).to_owned();
        // "... at line 7 column 3" reads as part of the sentence after
        // "expected one of a, b, c"; say "(line 7, column 3)" instead.
        if let Some(location) = err.inner().location() {
            let (line, column) = (location.line(), location.column());
            if let Some(stripped) = message.strip_suffix(&format!(" at line {line} column {column}")) {
                message.truncate(stripped.len());
            }
            message.push_str(&format!(" (line {line}, column {column})"));
        }
        let mut field = path;
        // serde: "unknown field `replicass`, expected one of `module`, ..."
        // The path already ends with the unknown key, so drop it and the
        // backticks: "unknown field, expected one of module, ...".
        if let Some(rest) = message.strip_prefix("unknown field `")
            && let Some((_key, rest)) = rest.split_once('`')
        {
            message = format!("unknown field{}", rest.replace('`', ""));
        }
        // serde: "duplicate field `apiVersion`", located at the parent.
        if let Some(rest) = message.strip_prefix("duplicate field `")
            && let Some((key, rest)) = rest.split_once('`')
        {
            field = join(&field, key);
            message = format!("field appears more than once{rest}");
        }
        ManifestError::new(field, message)
    }
}

/// serde_yaml_ng prefixes its messages with its own idea of the path
/// (`spec.routes[1]: unknown field ...`), which is the serde_path_to_error
/// path or a parent of it. Removes the longest such prefix.
fn strip_path_prefix<'a>(message: &'a str, path: &str) -> &'a str {
    let boundaries = path.char_indices().filter(|&(_, c)| c == '.' || c == '[').map(|(i, _)| i).chain([path.len()]);
    boundaries
        .filter_map(|end| message.strip_prefix(&path[..end]).and_then(|rest| rest.strip_prefix(": ")))
        .min_by_key(|rest| rest.len())
        .unwrap_or(message)
}

/// Joins a field path and a child key: `join("spec", "env")` = `spec.env`.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_owned() } else { format!("{parent}.{key}") }
}

/// Path of a map entry, quoting keys that are not plain identifiers:
/// `spec.env.GREETING`, `metadata.labels["app.kubernetes.io/name"]`.
pub(crate) fn key_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain { join(parent, key) } else { format!("{parent}[{key:?}]") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display() {
        let err = ManifestError::new("spec.replicas", "too many");
        assert_eq!(err.to_string(), "spec.replicas: too many");
        let err = err.in_document(Some(2));
        assert_eq!(err.to_string(), "document 2: spec.replicas: too many");
        assert_eq!(ManifestError::new("", "no Service documents").to_string(), "no Service documents");
    }

    #[test]
    fn paths() {
        assert_eq!(key_path("spec.env", "GREETING"), "spec.env.GREETING");
        assert_eq!(key_path("spec.env", ""), "spec.env[\"\"]");
        assert_eq!(key_path("spec.env", "A=B"), "spec.env[\"A=B\"]");
        assert_eq!(strip_path_prefix("spec.routes[1]: unknown field", "spec.routes[1].hots"), "unknown field");
        assert_eq!(strip_path_prefix("spec: bad", "spec"), "bad");
        assert_eq!(strip_path_prefix("bad", ""), "bad");
    }
}
