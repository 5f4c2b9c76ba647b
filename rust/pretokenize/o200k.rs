// TEMPORARY stand-in until the hand-written scanners land.
use std::sync::OnceLock;
pub(crate) fn scan<'a>(text: &'a str, mut f: impl FnMut(&'a str)) {
    static RE: OnceLock<fancy_regex::Regex> = OnceLock::new();
    let re = RE.get_or_init(|| fancy_regex::Regex::new(super::O200K_PATTERN).unwrap());
    for m in re.find_iter(text).flatten() {
        f(m.as_str());
    }
}
