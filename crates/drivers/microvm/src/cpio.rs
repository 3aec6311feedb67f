//! The initramfs archive: cpio "newc", the one format the kernel unpacks.
//! (Thirty lines of a fixed ASCII header; no crate needed.)

/// A newc archive under construction.
#[derive(Debug, Default)]
pub struct Archive {
    out: Vec<u8>,
    ino: u32,
}

impl Archive {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0, // check
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, data);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_headers_are_aligned_and_terminated() {
        let mut a = Archive::default();
        a.dir("dev");
        a.file("init", 0o755, b"#!x");
        let out = a.finish();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        let s = String::from_utf8_lossy(&out);
        assert!(s.contains("init\0"));
        assert!(s.contains("TRAILER!!!\0"));
        // The file's size field (7th) is 3.
        let init_hdr = s.find("0000000300000000").is_some();
        assert!(init_hdr, "{s}");
    }
}
