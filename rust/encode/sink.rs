//! The encoder's output: ids appended to a `Vec<u32>` a fixed-size block at a time.
//!
//! A cached pretoken has one to four ids. Copying exactly that many is a variable-length copy
//! (a `memcpy` call per pretoken); appending all four slots of the entry and then cutting the
//! vector back to the real count is one 16-byte store and two length updates. (The vector used
//! to be kept zero-filled ahead of the written ids instead: zeroing every slot before writing it
//! and a call every 64 ids to lengthen it cost 2% of encoding English text.)

/// Appends the first `n <= N` of `ids` to `out`.
#[inline(always)]
pub fn push_ids<const N: usize>(out: &mut Vec<u32>, ids: &[u32; N], n: usize) {
    let len = out.len();
    out.extend_from_slice(ids);
    out.truncate(len + n.min(N));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_exactly_the_pushed_ids() {
        let mut v = vec![7];
        for i in 0..100u32 {
            push_ids(
                &mut v,
                &[i, 100 + i, 200 + i, 300 + i],
                (i % 4 + 1) as usize,
            );
            if i % 10 == 0 {
                v.push(9999);
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
