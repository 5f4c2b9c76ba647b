// TEMPORARY stand-in until the hand-written scanners land.
pub(crate) fn last_ascii_restart_point(text: &[u8], limit: usize) -> Option<usize> {
    let hi = limit.min(text.len().checked_sub(1)?);
    (1..=hi)
        .rev()
        .find(|&p| text[p - 1].is_ascii_alphanumeric() && (text[p] == b' ' || text[p] == b'\n'))
}
