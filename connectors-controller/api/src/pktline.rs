//! Git's pkt-line framing (gitprotocol-common(5)): four hex digits of length (the four
//! included), then the data; `0000` flush, `0001` delimiter, `0002` response end.

#[derive(Debug, PartialEq, Eq)]
pub enum Pkt<'a> {
    Flush,
    Delim,
    ResponseEnd,
    /// A line, without its trailing LF.
    Data(&'a [u8]),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PktError {
    #[error("a pkt-line length is not four hex digits at byte {0}")]
    BadLength(usize),
    #[error("a pkt-line at byte {0} runs past the end of the answer")]
    Truncated(usize),
}

/// Reads pkt-lines from a buffer.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// The next pkt-line, `None` at the end of the buffer.
    pub fn next_pkt(&mut self) -> Option<Result<Pkt<'a>, PktError>> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let at = self.pos;
        let Some(head) = self.buf.get(at..at + 4) else {
            return Some(Err(PktError::Truncated(at)));
        };
        let len = match std::str::from_utf8(head)
            .ok()
            .and_then(|h| usize::from_str_radix(h, 16).ok())
        {
            Some(n) => n,
            None => return Some(Err(PktError::BadLength(at))),
        };
        let pkt = match len {
            0 => Pkt::Flush,
            1 => Pkt::Delim,
            2 => Pkt::ResponseEnd,
            3 => return Some(Err(PktError::BadLength(at))),
            n => {
                let Some(data) = self.buf.get(at + 4..at + n) else {
                    return Some(Err(PktError::Truncated(at)));
                };
                self.pos = at + n;
                return Some(Ok(Pkt::Data(data.strip_suffix(b"\n").unwrap_or(data))));
            }
        };
        self.pos = at + 4;
        Some(Ok(pkt))
    }
}

/// Appends one data pkt-line.
pub fn write_data(out: &mut Vec<u8>, line: &str) {
    out.extend_from_slice(format!("{:04x}", line.len() + 4).as_bytes());
    out.extend_from_slice(line.as_bytes());
}

pub fn write_flush(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0000");
}

pub fn write_delim(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0001");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut b = Vec::new();
        write_data(&mut b, "command=ls-refs\n");
        write_delim(&mut b);
        write_data(&mut b, "peel\n");
        write_flush(&mut b);
        assert_eq!(&b[..4], b"0014");
        let mut r = Reader::new(&b);
        assert_eq!(r.next_pkt(), Some(Ok(Pkt::Data(b"command=ls-refs"))));
        assert_eq!(r.next_pkt(), Some(Ok(Pkt::Delim)));
        assert_eq!(r.next_pkt(), Some(Ok(Pkt::Data(b"peel"))));
        assert_eq!(r.next_pkt(), Some(Ok(Pkt::Flush)));
        assert_eq!(r.next_pkt(), None);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert_eq!(
            Reader::new(b"zzzz").next_pkt(),
            Some(Err(PktError::BadLength(0)))
        );
        assert_eq!(
            Reader::new(b"00ffab").next_pkt(),
            Some(Err(PktError::Truncated(0)))
        );
        assert_eq!(
            Reader::new(b"00").next_pkt(),
            Some(Err(PktError::Truncated(0)))
        );
        assert_eq!(
            Reader::new(b"0003").next_pkt(),
            Some(Err(PktError::BadLength(0)))
        );
    }
}
