//! A process's output, bounded for a model's context: the first and the
//! last bytes are kept, the middle is counted.

use std::collections::VecDeque;

/// Bytes of one stream kept from its start, and from its end.
pub const HEAD: usize = 32 << 10;
pub const TAIL: usize = 32 << 10;

#[derive(Debug, Default)]
pub struct Capture {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
}

impl Capture {
    pub fn push(&mut self, mut b: &[u8]) {
        self.total += b.len() as u64;
        let room = HEAD - self.head.len();
        if room > 0 {
            let n = room.min(b.len());
            self.head.extend_from_slice(&b[..n]);
            b = &b[n..];
        }
        if b.len() >= TAIL {
            self.tail.clear();
            self.tail.extend(&b[b.len() - TAIL..]);
        } else {
            let over = (self.tail.len() + b.len()).saturating_sub(TAIL);
            self.tail.drain(..over);
            self.tail.extend(b);
        }
    }

    /// Every byte the stream carried.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Some of the middle was dropped.
    pub fn truncated(&self) -> bool {
        self.total > (self.head.len() + self.tail.len()) as u64
    }

    /// The text (lossy UTF-8), with a marker where bytes were left out.
    pub fn text(&self) -> String {
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        let mut s = String::from_utf8_lossy(&self.head).into_owned();
        if self.truncated() {
            let gone = self.total - (self.head.len() + tail.len()) as u64;
            s.push_str(&format!("\n[… {gone} bytes of output left out …]\n"));
        }
        s.push_str(&String::from_utf8_lossy(&tail));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_output_is_kept_whole() {
        let mut c = Capture::default();
        c.push(b"hello ");
        c.push(b"world");
        assert_eq!(c.text(), "hello world");
        assert!(!c.truncated());
        assert_eq!(c.total(), 11);
    }

    #[test]
    fn up_to_head_plus_tail_is_kept_whole() {
        let data: Vec<u8> = (0..HEAD + TAIL).map(|i| b'a' + (i % 26) as u8).collect();
        let mut c = Capture::default();
        for chunk in data.chunks(1000) {
            c.push(chunk);
        }
        assert!(!c.truncated());
        assert_eq!(c.text().as_bytes(), &data[..]);
    }

    #[test]
    fn long_output_keeps_its_start_and_end() {
        let mut c = Capture::default();
        c.push(b"START");
        for _ in 0..100 {
            c.push(&[b'x'; 10_000]);
        }
        c.push(b"END");
        assert!(c.truncated());
        assert_eq!(c.total(), 1_000_008);
        let t = c.text();
        assert!(t.starts_with("START") && t.ends_with("END"), "{}", &t[..20]);
        let gone = 1_000_008 - (HEAD + TAIL) as u64;
        assert!(t.contains(&format!("[… {gone} bytes of output left out …]")));
        // One big chunk too.
        let mut c = Capture::default();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        c.push(&big);
        assert!(c.truncated());
        assert_eq!(c.tail.iter().copied().collect::<Vec<_>>(), &big[big.len() - TAIL..]);
        assert_eq!(c.head, &big[..HEAD]);
    }
}
