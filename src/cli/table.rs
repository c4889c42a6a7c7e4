//! Plain aligned columns for people.

/// Renders `rows` under `header` (when given), each column as wide as its widest cell and
/// separated by two spaces, without trailing blanks.
pub(crate) fn render(header: Option<&[&str]>, rows: &[Vec<String>]) -> String {
    let all: Vec<Vec<&str>> = header
        .map(|h| h.to_vec())
        .into_iter()
        .chain(rows.iter().map(|r| r.iter().map(String::as_str).collect()))
        .collect();
    let columns = all.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            all.iter()
                .filter_map(|row| row.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &all {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[c] - cell.chars().count() + 2;
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn columns_are_aligned_on_their_widest_cell() {
        let rows = vec![
            vec![
                "backend".to_string(),
                "backend".to_string(),
                "t1".to_string(),
            ],
            vec!["ci".to_string(), "eject".to_string(), "t2".to_string()],
        ];
        assert_eq!(
            render(Some(&["NAME", "ROLE", "CREATED"]), &rows),
            "NAME     ROLE     CREATED\nbackend  backend  t1\nci       eject    t2\n"
        );
        assert_eq!(render(None, &[]), "");
    }
}
