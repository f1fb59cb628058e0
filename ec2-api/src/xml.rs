//! XML output, written by hand: EC2's responses are simple trees of
//! lowerCamel elements and `<xSet><item>` lists.

use std::fmt::{Display, Write};

use crate::error::Ec2Error;

/// The API version used in the namespace when a request's `Version` is not
/// a date.
pub const DEFAULT_VERSION: &str = "2016-11-15";

/// Escapes text for element content or attribute values. Characters XML 1.0
/// cannot carry at all (most C0 controls) become U+FFFD.
pub fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' => out.push(c),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

/// The namespace version for a request's `Version` parameter.
pub fn namespace_version(version: Option<&str>) -> &str {
    match version {
        Some(v)
            if v.len() == 10
                && v.bytes().enumerate().all(|(i, b)| {
                    if i == 4 || i == 7 {
                        b == b'-'
                    } else {
                        b.is_ascii_digit()
                    }
                }) =>
        {
            v
        }
        _ => DEFAULT_VERSION,
    }
}

/// Escapes what is written through it into the string.
struct Escaping<'a>(&'a mut String);

impl Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        // Most text needs no escaping: copy it whole.
        if s.bytes()
            .all(|b| b >= 0x20 && !matches!(b, b'&' | b'<' | b'>' | b'"' | b'\'') && b < 0xEF)
        {
            self.0.push_str(s);
        } else {
            escape(s, self.0);
        }
        Ok(())
    }
}

/// A response body under construction.
#[derive(Default)]
pub struct Xml {
    buf: String,
    /// `buf` starts with the opening of the success document (see
    /// [`Xml::document`]).
    opened: bool,
}

impl Xml {
    pub fn new() -> Xml {
        Xml::default()
    }

    /// An empty body with room for `bytes`.
    pub fn with_capacity(bytes: usize) -> Xml {
        Xml {
            buf: String::with_capacity(bytes),
            opened: false,
        }
    }

    /// A body that already holds the opening of `action`'s success
    /// document, with room for `bytes` more: [`response`] closes it in
    /// place instead of copying it into a new document (answers of
    /// megabytes are written once). The arguments must be the ones
    /// [`response`] will get.
    pub fn document(action: &str, version: &str, request_id: &str, bytes: usize) -> Xml {
        let mut buf = String::with_capacity(bytes + 200 + 2 * action.len() + request_id.len());
        open_document(&mut buf, action, version, request_id);
        Xml { buf, opened: true }
    }

    /// Appends XML written earlier (by another [`Xml`]) as it is.
    pub fn raw(&mut self, xml: &str) -> &mut Self {
        self.buf.push_str(xml);
        self
    }

    pub fn open(&mut self, name: &str) -> &mut Self {
        self.buf.push('<');
        self.buf.push_str(name);
        self.buf.push('>');
        self
    }

    pub fn close(&mut self, name: &str) -> &mut Self {
        self.buf.push_str("</");
        self.buf.push_str(name);
        self.buf.push('>');
        self
    }

    /// `<name>value</name>`, escaped as it is formatted (no copy).
    pub fn leaf(&mut self, name: &str, value: impl Display) -> &mut Self {
        self.open(name);
        let _ = write!(Escaping(&mut self.buf), "{value}");
        self.close(name)
    }

    /// A leaf only when there is a value.
    pub fn opt<T: Display>(&mut self, name: &str, value: Option<T>) -> &mut Self {
        if let Some(v) = value {
            self.leaf(name, v);
        }
        self
    }

    /// `<name>...</name>` with `f` writing the content.
    pub fn el(&mut self, name: &str, f: impl FnOnce(&mut Xml)) -> &mut Self {
        self.open(name);
        f(self);
        self.close(name)
    }

    /// `<name>...</name>` with `f` writing the content, only when `value`
    /// is present.
    pub fn el_opt<T>(
        &mut self,
        name: &str,
        value: Option<T>,
        f: impl FnOnce(&mut Xml, T),
    ) -> &mut Self {
        if let Some(v) = value {
            self.open(name);
            f(self, v);
            self.close(name);
        }
        self
    }

    /// `<name><item>...</item>...</name>` (always written, empty or not, as
    /// EC2 does for the sets it returns).
    pub fn set<T>(
        &mut self,
        name: &str,
        items: &[T],
        mut f: impl FnMut(&mut Xml, &T),
    ) -> &mut Self {
        self.open(name);
        for it in items {
            self.open("item");
            f(self, it);
            self.close("item");
        }
        self.close(name)
    }

    /// `<name></name>`: a set with no items.
    pub fn empty_set(&mut self, name: &str) -> &mut Self {
        self.open(name).close(name)
    }

    /// `<tagSet>` with key/value items.
    pub fn tags<'a>(
        &mut self,
        name: &str,
        tags: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> &mut Self {
        let items: Vec<_> = tags.into_iter().collect();
        self.set(name, &items, |x, (k, v)| {
            x.leaf("key", k).leaf("value", v);
        })
    }

    pub fn into_string(self) -> String {
        self.buf
    }
}

fn open_document(out: &mut String, action: &str, version: &str, request_id: &str) {
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<");
    out.push_str(action);
    out.push_str("Response xmlns=\"http://ec2.amazonaws.com/doc/");
    out.push_str(version);
    out.push_str("/\"><requestId>");
    out.push_str(request_id);
    out.push_str("</requestId>");
}

/// The whole success document for `action`.
pub fn response(action: &str, version: &str, request_id: &str, body: Xml) -> String {
    let mut out = if body.opened {
        body.buf
    } else {
        let mut out = String::with_capacity(body.buf.len() + 200);
        open_document(&mut out, action, version, request_id);
        out.push_str(&body.buf);
        out
    };
    out.push_str("</");
    out.push_str(action);
    out.push_str("Response>");
    out
}

/// The error document.
pub fn error_response(err: &Ec2Error, request_id: &str) -> String {
    let mut out =
        String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>");
    escape(&err.code, &mut out);
    out.push_str("</Code><Message>");
    escape(&err.message, &mut out);
    out.push_str("</Message></Error></Errors><RequestID>");
    out.push_str(request_id);
    out.push_str("</RequestID></Response>");
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn leaves_escape_what_needs_it_and_copy_the_rest() {
        let mut x = Xml::new();
        x.leaf("a", "plain text é")
            .leaf("b", "x<y & 'z' \"q\" >")
            .leaf("c", "cr\r\u{1}\u{FFFF}")
            .leaf("d", 42);
        assert_eq!(
            x.into_string(),
            "<a>plain text é</a><b>x&lt;y &amp; &apos;z&apos; &quot;q&quot; &gt;</b>\
             <c>cr&#13;\u{FFFD}\u{FFFD}</c><d>42</d>"
        );
    }

    use super::*;

    #[test]
    fn escapes_everything_dangerous() {
        let mut out = String::new();
        escape("a<b>&\"c'\u{1}\r\n", &mut out);
        assert_eq!(out, "a&lt;b&gt;&amp;&quot;c&apos;\u{FFFD}&#13;\n");
    }

    #[test]
    fn documents() {
        let mut x = Xml::new();
        x.leaf("return", true).set("groupSet", &["sg-1"], |x, g| {
            x.leaf("groupId", g);
        });
        let doc = response("Foo", "2016-11-15", "rid", x);
        assert_eq!(
            doc,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<FooResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>rid</requestId><return>true</return><groupSet><item><groupId>sg-1</groupId></item></groupSet></FooResponse>"
        );
        let e = error_response(&Ec2Error::invalid_value("bad <x>"), "rid");
        assert!(e.ends_with("<Response><Errors><Error><Code>InvalidParameterValue</Code><Message>bad &lt;x&gt;</Message></Error></Errors><RequestID>rid</RequestID></Response>"));
        // A body opened as the document closes to the same bytes.
        let mut x = Xml::document("Foo", "2016-11-15", "rid", 10);
        x.leaf("return", true).set("groupSet", &["sg-1"], |x, g| {
            x.leaf("groupId", g);
        });
        assert_eq!(response("Foo", "2016-11-15", "rid", x), doc);
        assert_eq!(namespace_version(Some("2014-10-01")), "2014-10-01");
        assert_eq!(namespace_version(Some("\"/><x")), DEFAULT_VERSION);
        assert_eq!(namespace_version(None), DEFAULT_VERSION);
    }
}
