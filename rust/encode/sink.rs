//! The encoder's output: ids appended to a `Vec<u32>` a fixed-size block at a time.
//!
//! A cached pretoken has one to four ids. Copying exactly that many is a variable-length copy
//! (a `memcpy` call per pretoken); appending all four slots of the entry and then cutting the
//! vector back to the real count is one 16-byte store and two length updates. (The vector used
//! to be kept zero-filled ahead of the written ids instead: zeroing every slot before writing it
//! and a call every 64 ids to lengthen it cost 2% of encoding English text.)

/// Appends ids to `buf`.
pub struct Sink<'a> {
    buf: &'a mut Vec<u32>,
}

impl<'a> Sink<'a> {
    /// Appends after what `buf` holds now.
    pub fn new(buf: &'a mut Vec<u32>) -> Self {
        Sink { buf }
    }

    /// Appends the first `n <= N` of `ids`.
    #[inline(always)]
    pub fn push<const N: usize>(&mut self, ids: &[u32; N], n: usize) {
        let len = self.buf.len();
        self.buf.extend_from_slice(ids);
        self.buf.truncate(len + n.min(N));
    }

    /// The vector, holding exactly the ids written so far, to push more onto it directly.
    #[inline(always)]
    pub fn vec(&mut self) -> &mut Vec<u32> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_exactly_the_pushed_ids() {
        let mut v = vec![7];
        {
            let mut s = Sink::new(&mut v);
            for i in 0..100u32 {
                s.push(&[i, 100 + i, 200 + i, 300 + i], (i % 4 + 1) as usize);
                if i % 10 == 0 {
                    s.vec().push(9999);
                }
            }
        }
        let mut want = vec![7];
        for i in 0..100u32 {
            want.extend_from_slice(&[i, 100 + i, 200 + i, 300 + i][..(i % 4 + 1) as usize]);
            if i % 10 == 0 {
                want.push(9999);
            }
        }
        assert_eq!(v, want);
    }
}
