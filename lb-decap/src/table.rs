//! Text output: the counters table of `lb decap --stats` (the same layout as the `lb` CLI's
//! tables) and address lists.

use std::net::Ipv6Addr;

/// Rows under headers, columns padded to their widest cell, two spaces apart.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

pub(crate) fn join(addrs: &[Ipv6Addr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_are_padded_to_their_widest_cell() {
        let rows = vec![vec!["rx".to_string(), "12345".to_string()]];
        assert_eq!(
            super::table(&["COUNTER", "N"], &rows),
            "COUNTER  N\nrx       12345\n"
        );
    }
}
