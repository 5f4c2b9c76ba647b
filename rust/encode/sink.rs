//! The encoder's output: ids appended to a `Vec<u32>` a fixed-size block at a time.
//!
//! A cached pretoken has one to four ids. Copying exactly that many is a variable-length copy
//! (a `memcpy` call per pretoken); copying all four slots of the entry and advancing by the
//! count is four plain stores. So the vector is kept at least four ids longer than what has been
//! written, the slack being overwritten by the next pretoken and cut off at the end.

/// Writes ids into `buf` after its first `len` elements.
pub struct Sink<'a> {
    buf: &'a mut Vec<u32>,
    len: usize,
}

/// How far the vector is lengthened past the written ids when it runs short.
const SLACK: usize = 64;

impl<'a> Sink<'a> {
    /// Appends after what `buf` holds now.
    pub fn new(buf: &'a mut Vec<u32>) -> Self {
        let len = buf.len();
        Sink { buf, len }
    }

    /// Appends the first `n <= ids.len()` of `ids`.
    #[inline(always)]
    pub fn push<const N: usize>(&mut self, ids: &[u32; N], n: usize) {
        if self.buf.len() < self.len + N {
            self.lengthen(N);
        }
        if let Some(dst) = self.buf.get_mut(self.len..self.len + N) {
            dst.copy_from_slice(ids);
            self.len += n.min(N);
        }
    }

    #[cold]
    #[inline(never)]
    fn lengthen(&mut self, n: usize) {
        self.buf.resize(self.len + n + SLACK, 0);
    }

    /// The vector holding exactly the ids written so far, to push more onto it directly; call
    /// `sync` afterwards.
    #[inline(always)]
    pub fn vec(&mut self) -> &mut Vec<u32> {
        self.buf.truncate(self.len);
        self.buf
    }

    /// Takes the vector's length as the written length (after pushes through `vec`).
    #[inline(always)]
    pub fn sync(&mut self) {
        self.len = self.buf.len();
    }
}

impl Drop for Sink<'_> {
    /// Cuts off the slack.
    fn drop(&mut self) {
        self.buf.truncate(self.len);
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
                    s.sync();
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
