//! Header rules of a route: remove, set and add request headers before forwarding, and response
//! headers before answering, with a few variables (`${client_addr}`, `${request_id}`, `${host}`,
//! `${scheme}`). Names and templates are checked when the config loads; applying them allocates
//! only the values they render.

use http::{HeaderMap, HeaderName, HeaderValue};
use std::fmt;
use std::net::IpAddr;

/// Headers no rule may touch: they frame the message or concern one hop only, and lb owns them.
pub const PROTECTED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// A value a template can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// The client's address (after PROXY protocol and trusted forwarded headers).
    ClientAddr,
    /// The request's `X-Request-Id`.
    RequestId,
    /// The request's host, as the client sent it.
    Host,
    /// `http` or `https`, as the client connected.
    Scheme,
}

impl Var {
    const ALL: [(&'static str, Var); 4] = [
        ("client_addr", Var::ClientAddr),
        ("request_id", Var::RequestId),
        ("host", Var::Host),
        ("scheme", Var::Scheme),
    ];

    fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, v)| *v == self).map_or("?", |(n, _)| n)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var),
}

/// A header value with variables in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
    /// The value itself when the template names no variable: rendered once, at load.
    fixed: Option<HeaderValue>,
}

impl Template {
    /// Parses `text`: `${name}` is a variable, `$$` a dollar sign; any other `$` is itself.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                literal.push('$');
                rest = tail;
            } else if let Some(tail) = after.strip_prefix('{') {
                let Some((name, tail)) = tail.split_once('}') else {
                    return Err(format!("{text:?}: \"${{\" without its closing \"}}\""));
                };
                let Some(&(_, var)) = Var::ALL.iter().find(|(n, _)| *n == name) else {
                    let known: Vec<_> = Var::ALL.iter().map(|(n, _)| format!("${{{n}}}")).collect();
                    return Err(format!(
                        "{text:?}: unknown variable ${{{name}}} (known: {})",
                        known.join(", ")
                    ));
                };
                if !literal.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Var(var));
                rest = tail;
            } else {
                literal.push('$');
                rest = after;
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        for p in &pieces {
            if let Piece::Text(t) = p {
                HeaderValue::from_str(t).map_err(|_| format!("{text:?} is not a valid header value"))?;
            }
        }
        let fixed = match pieces.as_slice() {
            [] => Some(HeaderValue::from_static("")),
            [Piece::Text(t)] => HeaderValue::from_str(t).ok(),
            _ => None,
        };
        Ok(Self { pieces, fixed })
    }

    fn render(&self, vars: &Vars<'_>) -> Option<HeaderValue> {
        if let Some(v) = &self.fixed {
            return Some(v.clone());
        }
        let mut out: Vec<u8> = Vec::with_capacity(64);
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
                Piece::Var(Var::ClientAddr) => out.extend_from_slice(vars.client.to_string().as_bytes()),
                Piece::Var(Var::RequestId) => {
                    out.extend_from_slice(vars.request_id.map_or(&[][..], |v| v.as_bytes()))
                }
                Piece::Var(Var::Host) => out.extend_from_slice(vars.host.map_or(&[][..], |v| v.as_bytes())),
                Piece::Var(Var::Scheme) => out.extend_from_slice(if vars.tls { b"https" } else { b"http" }),
            }
        }
        HeaderValue::from_bytes(&out).ok()
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.pieces {
            match p {
                Piece::Text(t) => f.write_str(&t.replace('$', "$$"))?,
                Piece::Var(v) => write!(f, "${{{}}}", v.name())?,
            }
        }
        Ok(())
    }
}

/// What a template's variables stand for in one request.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    /// The client's address.
    pub client: IpAddr,
    /// The request id.
    pub request_id: Option<&'a HeaderValue>,
    /// The request's host.
    pub host: Option<&'a HeaderValue>,
    /// Whether the client came over TLS.
    pub tls: bool,
}

/// One direction's rules, applied in this order: remove, set (replaces every value), add (appends).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderOps {
    /// Headers taken out.
    pub remove: Vec<HeaderName>,
    /// Headers set to one value, replacing any.
    pub set: Vec<(HeaderName, Template)>,
    /// Values appended to a header's own.
    pub add: Vec<(HeaderName, Template)>,
}

impl HeaderOps {
    /// No rules.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Applies the rules to `headers`. A value that renders invalid (cannot happen with the values
    /// lb's variables take) is skipped.
    pub fn apply(&self, headers: &mut HeaderMap, vars: &Vars<'_>) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, template) in &self.set {
            if let Some(v) = template.render(vars) {
                headers.insert(name.clone(), v);
            }
        }
        for (name, template) in &self.add {
            if let Some(v) = template.render(vars) {
                headers.append(name.clone(), v);
            }
        }
    }
}

impl fmt::Display for HeaderOps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            let s = if first { "" } else { " " };
            first = false;
            f.write_str(s)
        };
        for n in &self.remove {
            sep(f)?;
            write!(f, "-{n}")?;
        }
        for (n, t) in &self.set {
            sep(f)?;
            write!(f, "{n}={t}")?;
        }
        for (n, t) in &self.add {
            sep(f)?;
            write!(f, "+{n}={t}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_their_variables() {
        let t = Template::parse("for=${client_addr}; id=${request_id}; ${scheme}://${host}/ costs $$5 or $x")
            .unwrap();
        let id = HeaderValue::from_static("abc");
        let host = HeaderValue::from_static("example.com");
        let vars = Vars {
            client: "192.0.2.1".parse().unwrap(),
            request_id: Some(&id),
            host: Some(&host),
            tls: true,
        };
        assert_eq!(t.render(&vars).unwrap(), "for=192.0.2.1; id=abc; https://example.com/ costs $5 or $x");
        assert_eq!(
            t.to_string(),
            "for=${client_addr}; id=${request_id}; ${scheme}://${host}/ costs $$5 or $$x"
        );
        assert!(Template::parse("plain").unwrap().fixed.is_some());
    }

    #[test]
    fn bad_templates_say_why() {
        assert!(Template::parse("${nope}").unwrap_err().contains("unknown variable ${nope}"));
        assert!(Template::parse("${host").unwrap_err().contains("closing"));
        assert!(Template::parse("a\nb").unwrap_err().contains("not a valid header value"));
    }

    #[test]
    fn rules_remove_then_set_then_add() {
        let name = |s: &str| HeaderName::from_bytes(s.as_bytes()).unwrap();
        let ops = HeaderOps {
            remove: vec![name("x-secret")],
            set: vec![(name("x-env"), Template::parse("prod").unwrap())],
            add: vec![(name("x-env"), Template::parse("eu").unwrap())],
        };
        let mut h = HeaderMap::new();
        h.insert("x-secret", HeaderValue::from_static("s"));
        h.append("x-env", HeaderValue::from_static("old"));
        h.append("x-env", HeaderValue::from_static("older"));
        let vars = Vars { client: "::1".parse().unwrap(), request_id: None, host: None, tls: false };
        ops.apply(&mut h, &vars);
        assert!(h.get("x-secret").is_none());
        assert_eq!(h.get_all("x-env").iter().collect::<Vec<_>>(), ["prod", "eu"]);
    }
}
