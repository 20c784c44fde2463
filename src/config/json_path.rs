//! JSON paths in the config (`playback.ignore_json_paths`): parsed when the
//! config is read, so a bad one is reported at its line and column.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A JSON path left out of comparisons: `$.a.b`, `$.items[*].id`, `$.list[0]`.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath(Vec<Step>);

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
    Every,
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let bad = |why: &str| format!("JSON path `{text}`: {why} (e.g. $.a.b, $.items[*].id)");
        let mut rest = text
            .strip_prefix('$')
            .ok_or_else(|| bad("must start with $"))?;
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                if end == 0 {
                    return Err(bad("a key is empty"));
                }
                steps.push(Step::Key(after[..end].to_string()));
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let end = after.find(']').ok_or_else(|| bad("a [ is not closed"))?;
                let inner = &after[..end];
                steps.push(match inner {
                    "*" => Step::Every,
                    n => Step::Index(n.parse().map_err(|_| bad("use [N] or [*]"))?),
                });
                rest = &after[end + 1..];
            } else {
                return Err(bad("expected . or ["));
            }
        }
        if steps.is_empty() {
            return Err(bad("names nothing"));
        }
        Ok(JsonPath(steps))
    }

    /// Removes what the path names from `value` (nothing if it is absent).
    pub fn remove(&self, value: &mut Value) {
        remove_at(value, &self.0);
    }
}

fn remove_at(value: &mut Value, steps: &[Step]) {
    let Some((step, rest)) = steps.split_first() else {
        return;
    };
    match (step, value) {
        (Step::Key(k), Value::Object(map)) if rest.is_empty() => {
            map.remove(k);
        }
        (Step::Key(k), Value::Object(map)) => {
            if let Some(v) = map.get_mut(k) {
                remove_at(v, rest);
            }
        }
        (Step::Index(i), Value::Array(items)) if rest.is_empty() => {
            // Blanked rather than removed, so later indices keep their place.
            if let Some(v) = items.get_mut(*i) {
                *v = Value::Null;
            }
        }
        (Step::Index(i), Value::Array(items)) => {
            if let Some(v) = items.get_mut(*i) {
                remove_at(v, rest);
            }
        }
        (Step::Every, Value::Array(items)) if rest.is_empty() => items.clear(),
        (Step::Every, Value::Array(items)) => {
            for v in items {
                remove_at(v, rest);
            }
        }
        (Step::Every, Value::Object(map)) if rest.is_empty() => map.clear(),
        (Step::Every, Value::Object(map)) => {
            for v in map.values_mut() {
                remove_at(v, rest);
            }
        }
        _ => {}
    }
}

/// The path as written: `$.items[*].id`.
impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("$")?;
        for step in &self.0 {
            match step {
                Step::Key(key) => write!(f, ".{key}")?,
                Step::Index(i) => write!(f, "[{i}]")?,
                Step::Every => f.write_str("[*]")?,
            }
        }
        Ok(())
    }
}

impl Serialize for JsonPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for JsonPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        JsonPath::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths_parse_or_say_why_not() {
        assert_eq!(
            JsonPath::parse("$.a[2][*].b").unwrap(),
            JsonPath(vec![
                Step::Key("a".into()),
                Step::Index(2),
                Step::Every,
                Step::Key("b".into())
            ])
        );
        for text in ["$.a[2][*].b", "$.items[*].id", "$.x"] {
            assert_eq!(JsonPath::parse(text).unwrap().to_string(), text);
        }
        for bad in ["a.b", "$", "$..a", "$.a[", "$.a[x]", "$a"] {
            let e = JsonPath::parse(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn removing_keeps_array_positions() {
        let mut v: Value = serde_json::from_str(r#"{"a":[1,2,3],"b":{"c":1,"d":2}}"#).unwrap();
        JsonPath::parse("$.a[1]").unwrap().remove(&mut v);
        JsonPath::parse("$.b.c").unwrap().remove(&mut v);
        JsonPath::parse("$.nothing.here").unwrap().remove(&mut v);
        assert_eq!(v.to_string(), r#"{"a":[1,null,3],"b":{"d":2}}"#);
    }
}
