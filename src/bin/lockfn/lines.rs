//! `lockfn hold`'s request lines from stdin: split in linear time (each byte is looked at
//! once), each line capped at [`MAX_REQUEST`] bytes. A longer line is skipped up to its
//! newline without being stored, and reported once as [`Line::TooLong`].

/// Longest request line kept (`update`, `release`: a few bytes).
pub const MAX_REQUEST: usize = 4096;

#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its newline.
    Text(Vec<u8>),
    /// A line longer than the cap ended (or began to be skipped): how many bytes were seen
    /// so far, at least `MAX_REQUEST + 1`.
    TooLong(usize),
}

pub struct LineReader {
    buf: Vec<u8>,
    max: usize,
    /// Skipping the rest of an overlong line: bytes seen of it.
    skipping: Option<usize>,
}

impl LineReader {
    pub fn new(max: usize) -> LineReader {
        LineReader {
            buf: Vec::new(),
            max,
            skipping: None,
        }
    }

    /// Feed bytes; complete lines (and overlong ones, once each) go to `out`.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<Line>) {
        while !data.is_empty() {
            let nl = data.iter().position(|&b| b == b'\n');
            let (piece, rest, ends) = match nl {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            data = rest;
            if let Some(seen) = self.skipping.as_mut() {
                *seen += piece.len();
                if ends {
                    self.skipping = None;
                }
                continue;
            }
            if self.buf.len() + piece.len() > self.max {
                let seen = self.buf.len() + piece.len();
                self.buf.clear();
                out.push(Line::TooLong(seen));
                if !ends {
                    self.skipping = Some(seen);
                }
                continue;
            }
            self.buf.extend_from_slice(piece);
            if ends {
                out.push(Line::Text(std::mem::take(&mut self.buf)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(r: &mut LineReader, chunks: &[&[u8]]) -> Vec<Line> {
        let mut out = Vec::new();
        for c in chunks {
            r.push(c, &mut out);
        }
        out
    }

    #[test]
    fn splits_across_chunks() {
        let mut r = LineReader::new(16);
        let out = feed(&mut r, &[b"upd", b"ate\nrel", b"ease\n\n"]);
        assert_eq!(
            out,
            vec![
                Line::Text(b"update".to_vec()),
                Line::Text(b"release".to_vec()),
                Line::Text(Vec::new())
            ]
        );
    }

    #[test]
    fn an_overlong_line_is_reported_once_and_skipped() {
        let mut r = LineReader::new(8);
        let out = feed(&mut r, &[b"0123456", b"789abc", b"def\nupdate\n"]);
        assert_eq!(out, vec![Line::TooLong(13), Line::Text(b"update".to_vec())]);
    }

    #[test]
    fn two_megabytes_without_newline_take_linear_time_and_bounded_memory() {
        let mut r = LineReader::new(MAX_REQUEST);
        let chunk = vec![b'x'; 256];
        let t = std::time::Instant::now();
        let mut out = Vec::new();
        for _ in 0..(8 << 10) {
            r.push(&chunk, &mut out);
        }
        assert_eq!(out, vec![Line::TooLong(MAX_REQUEST + 256)]);
        assert!(r.buf.capacity() <= MAX_REQUEST * 2);
        // A bound on bad behaviour (the quadratic reader took 5.7 s), not a speed claim.
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
        r.push(b"\nrelease\n", &mut out);
        assert_eq!(out.last(), Some(&Line::Text(b"release".to_vec())));
    }
}
