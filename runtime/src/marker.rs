//! What a component says about itself in Shoal's custom section.
//!
//! The JS SDK (`sdk/js/build.mjs`) appends a top-level custom section named
//! `shoal:instances` holding `reuse` to the components it builds from a
//! Node http server: their `wasi:http/incoming-handler` export serves
//! request after request on one instance, so Shoal reuses their instances
//! unless the manifest says otherwise. Other components (a componentize-js
//! fetch-event handler cannot serve twice) carry no such section.

/// The custom section's name.
pub const SECTION: &str = "shoal:instances";
/// Its contents for a component that serves many requests per instance.
pub const REUSE: &[u8] = b"reuse";

/// Whether `bytes` (a component) is marked as serving many requests on one
/// instance. Reads only the top level's section headers; anything that does
/// not parse is unmarked (compiling it reports what is wrong).
pub fn supports_reuse(bytes: &[u8]) -> bool {
    top_level_custom_sections(bytes).any(|(name, contents)| name == SECTION.as_bytes() && contents == REUSE)
}

/// The top-level custom sections of a component or module, `(name,
/// contents)`, up to the first malformed section.
fn top_level_custom_sections(bytes: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    // "\0asm", then a version and layer (2 bytes each).
    let mut rest = if bytes.len() >= 8 && bytes.starts_with(b"\0asm") { &bytes[8..] } else { &[][..] };
    std::iter::from_fn(move || {
        while let Some((&id, after)) = rest.split_first() {
            let (size, after) = leb128(after)?;
            let contents = after.get(..size)?;
            rest = &after[size..];
            if id == 0 {
                let (name_len, named) = leb128(contents)?;
                let name = named.get(..name_len)?;
                return Some((name, &named[name_len..]));
            }
        }
        None
    })
}

/// An unsigned LEB128 `u32` at the start of `bytes`, and what follows it.
fn leb128(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let mut value: u32 = 0;
    for (i, &byte) in bytes.iter().enumerate().take(5) {
        value |= u32::from(byte & 0x7f).checked_shl(7 * i as u32)?;
        if byte & 0x80 == 0 {
            return Some((value as usize, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(id: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![id];
        let mut n = contents.len();
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            out.push(if n == 0 { byte } else { byte | 0x80 });
            if n == 0 {
                break;
            }
        }
        out.extend_from_slice(contents);
        out
    }

    fn custom(name: &str, contents: &[u8]) -> Vec<u8> {
        let mut body = vec![name.len() as u8];
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(contents);
        section(0, &body)
    }

    /// A component header, a core module section with `inner` in it, then
    /// `tail`.
    fn component(inner: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut out = b"\0asm\x0d\x00\x01\x00".to_vec();
        out.extend(section(1, inner));
        out.extend_from_slice(tail);
        out
    }

    #[test]
    fn finds_the_marker_at_the_top_level_only() {
        let marker = custom(SECTION, REUSE);
        assert!(supports_reuse(&component(b"\0asm\x01\0\0\0", &marker)));
        // Big enough for a multi-byte size, after another custom section.
        let mut tail = custom("producers", &[7; 300]);
        tail.extend(&marker);
        assert!(supports_reuse(&component(&[1; 200], &tail)));
        // Inside a nested module it says nothing about the component.
        let mut nested = b"\0asm\x01\0\0\0".to_vec();
        nested.extend(&marker);
        assert!(!supports_reuse(&component(&nested, &[])));
    }

    #[test]
    fn anything_else_is_unmarked() {
        assert!(!supports_reuse(&component(&[], &custom(SECTION, b"fresh"))));
        assert!(!supports_reuse(&component(&[], &custom("shoal:other", REUSE))));
        assert!(!supports_reuse(b""));
        assert!(!supports_reuse(b"not wasm at all"));
        // A section that claims more bytes than there are.
        let mut cut = component(&[], &custom(SECTION, REUSE));
        cut.truncate(cut.len() - 1);
        assert!(!supports_reuse(&cut));
        assert!(!supports_reuse(&component(&[], &[0, 0xff, 0xff, 0xff, 0xff, 0x7f])));
    }
}
