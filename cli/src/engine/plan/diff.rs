//! A line diff of two texts (templates), for `tyrell plan`: the lines only in the old text
//! (`-`) and only in the new one (`+`), in order, from a longest common subsequence.

/// The changed lines of `new` against `old`: `-line` removed, `+line` added, in order;
/// empty when the texts have the same lines (trailing whitespace and line endings ignored).
pub fn lines(old: &str, new: &str) -> Vec<String> {
    let a: Vec<&str> = old.lines().map(str::trim_end).collect();
    let b: Vec<&str> = new.lines().map(str::trim_end).collect();
    // Common head and tail first: templates differ in a few places.
    let head = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let tail = a[head..].iter().rev().zip(b[head..].iter().rev()).take_while(|(x, y)| x == y).count();
    let (a, b) = (&a[head..a.len() - tail], &b[head..b.len() - tail]);
    // LCS table over what is left, (n+1) x (m+1).
    let (n, m) = (a.len(), b.len());
    let mut t = vec![0u32; (n + 1) * (m + 1)];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            t[i * (m + 1) + j] = if a[i] == b[j] {
                t[(i + 1) * (m + 1) + j + 1] + 1
            } else {
                t[(i + 1) * (m + 1) + j].max(t[i * (m + 1) + j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < n && (j == m || t[(i + 1) * (m + 1) + j] >= t[i * (m + 1) + j + 1]) {
            out.push(format!("-{}", a[i]));
            i += 1;
        } else {
            out.push(format!("+{}", b[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_lines_show() {
        assert!(lines("a\nb\nc\n", "a\nb\nc").is_empty());
        assert_eq!(lines("a\nb\nc", "a\nx\nc"), ["-b", "+x"]);
        assert_eq!(lines("a\nc", "a\nb\nc"), ["+b"]);
        assert_eq!(lines("a\nb\nc", "a\nc"), ["-b"]);
        assert_eq!(lines("", "a"), ["+a"]);
    }
}
