//! Reading nft's listings back: the ClientIP-affinity sets whose live entries survive a table swap.

use crate::render::TABLE;
use crate::Error;
pub use k3rs_nft::Nft;

/// `2h59m59s984ms` → duration (nft's time format: d, h, m, s, ms).
pub fn parse_nft_duration(s: &str) -> Option<std::time::Duration> {
    let mut total_ms: u64 = 0;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit_ms = match c {
            'd' => 86_400_000,
            'h' => 3_600_000,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1
            }
            'm' => 60_000,
            's' => 1000,
            _ => return None,
        };
        total_ms += n * unit_ms;
        any = true;
    }
    (any && num.is_empty()).then(|| std::time::Duration::from_millis(total_ms))
}

/// The (address, time left) entries of `set <name> { ... elements = { ... } }` blocks in nft's
/// listing output, by set name.
pub fn parse_set_entries(
    listing: &str,
) -> std::collections::BTreeMap<String, Vec<(std::net::Ipv4Addr, std::time::Duration)>> {
    let mut out = std::collections::BTreeMap::new();
    let mut rest = listing;
    while let Some(i) = rest.find("set ") {
        rest = &rest[i + 4..];
        let Some((name, body)) = rest.split_once(" {") else {
            break;
        };
        let name = name.trim().to_string();
        let end = body
            .find("\n\t}")
            .or_else(|| body.find('}'))
            .unwrap_or(body.len());
        let block = &body[..end];
        let mut entries = Vec::new();
        if let Some((_, elems)) = block.split_once("elements = {") {
            let elems = elems.split('}').next().unwrap_or("");
            for e in elems.split(',') {
                let toks: Vec<&str> = e.split_whitespace().collect();
                let Some(ip) = toks.first().and_then(|t| t.parse().ok()) else {
                    continue;
                };
                let left = toks
                    .iter()
                    .position(|t| *t == "expires")
                    .and_then(|p| toks.get(p + 1))
                    .and_then(|d| parse_nft_duration(d));
                if let Some(left) = left {
                    entries.push((ip, left));
                }
            }
        }
        out.insert(name, entries);
        rest = &body[end..];
    }
    out
}

/// The live entries of the named sets of the table, read with one nft call (`list sets`,
/// which prints the sets with their elements but none of the chains).
pub fn set_entries(
    nft: &Nft,
    sets: &[&str],
) -> Result<std::collections::BTreeMap<String, Vec<(std::net::Ipv4Addr, std::time::Duration)>>, Error>
{
    if sets.is_empty() {
        return Ok(Default::default());
    }
    let mut all = parse_set_entries(&nft.list_sets(TABLE)?);
    all.retain(|name, _| sets.contains(&name.as_str()));
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_and_set_listings_parse() {
        assert_eq!(
            parse_nft_duration("2h59m59s984ms"),
            Some(Duration::from_millis(10_799_984))
        );
        assert_eq!(parse_nft_duration("1d"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_nft_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_nft_duration("x"), None);
        let listing = "table ip k3rs {\n\tset aff-1 {\n\t\ttype ipv4_addr\n\t\tsize 65535\n\t\tflags dynamic,timeout\n\t\ttimeout 3h\n\t\telements = { 10.42.3.2 expires 2h59m, 10.42.3.3 timeout 1h expires 10s }\n\t}\n}\ntable ip k3rs {\n\tset aff-2 {\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout 3h\n\t}\n}\n";
        let e = parse_set_entries(listing);
        assert_eq!(
            e["aff-1"],
            vec![
                ("10.42.3.2".parse().unwrap(), Duration::from_secs(10_740)),
                ("10.42.3.3".parse().unwrap(), Duration::from_secs(10)),
            ]
        );
        assert!(e["aff-2"].is_empty());
    }
}
