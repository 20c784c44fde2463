//! Query strings: percent-decoded `name=value` pairs, each name once, and
//! no name the endpoint does not know.
//!
//! `+` stays `+` (this is not a form body), so an ISO 8601 offset such as
//! `+08:00` can be written as it is.

#[derive(Debug)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(raw: &str) -> Result<Query, String> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in raw.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = decode(name)?;
            let value = decode(value)?;
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(format!("query parameter `{name}` is given twice"));
            }
            pairs.push((name, value));
        }
        Ok(Query { pairs })
    }

    /// The value of `name`, removed from what is left to check.
    pub fn take(&mut self, name: &str) -> Option<String> {
        let i = self.pairs.iter().position(|(n, _)| n == name)?;
        Some(self.pairs.swap_remove(i).1)
    }

    /// Fails on any parameter not taken.
    pub fn finish(self, known: &[&str]) -> Result<(), String> {
        match self.pairs.first() {
            None => Ok(()),
            Some((name, _)) => Err(format!(
                "unknown query parameter `{name}`; this endpoint takes {}",
                known.join(", ")
            )),
        }
    }
}

fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-escape in query: `{s}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("query is not UTF-8: `{s}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_checks() {
        let mut q = Query::parse("a=1&start=2024-03-20T18:00:00+08:00&b=%2B%20x").unwrap();
        assert_eq!(q.take("a").as_deref(), Some("1"));
        assert_eq!(
            q.take("start").as_deref(),
            Some("2024-03-20T18:00:00+08:00")
        );
        assert_eq!(q.take("b").as_deref(), Some("+ x"));
        assert!(q.finish(&[]).is_ok());
    }

    #[test]
    fn refuses_duplicates_unknowns_and_bad_escapes() {
        assert!(Query::parse("a=1&a=2").unwrap_err().contains("twice"));
        let q = Query::parse("zzz=1").unwrap();
        assert!(q.finish(&["a"]).unwrap_err().contains("`zzz`"));
        assert!(Query::parse("a=%zz").is_err());
        assert!(Query::parse("a=%f").is_err());
        assert!(Query::parse("a=%ff").is_err());
    }
}
