//! A byte trie over token strings, for "the longest token that starts this text".
//!
//! Backtracking BPE asks this once per token it places, so the walk must touch little memory:
//! nodes are laid out breadth first, each node's children are one contiguous run of sorted
//! labels (a linear scan for a few children, a binary search for many), and the root's children
//! are a 256-entry table (every byte is a token, and the first step is the widest).

/// A node: its children are `labels[first..first + count]` / `children[..]` (same range), and
/// `value` is the value of the string that ends here (`NONE`: no string ends here).
#[derive(Clone, Copy, Debug)]
struct Node {
    first: u32,
    count: u32,
    value: u32,
}

/// Marks "no value" and "no child".
pub const NONE: u32 = u32::MAX;

/// Children runs up to this long are scanned; longer ones are binary searched.
const SCAN: usize = 8;

/// A fixed set of byte strings, each with a `u32` value.
#[derive(Clone)]
pub struct Trie {
    nodes: Vec<Node>,
    labels: Vec<u8>,
    children: Vec<u32>,
    /// The root's child for each byte (`NONE`: none).
    root: [u32; 256],
}

impl std::fmt::Debug for Trie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Trie({} nodes)", self.nodes.len())
    }
}

impl Trie {
    /// The trie of `entries` (non-empty strings, each given once; a value must not be `NONE`).
    pub fn new(mut entries: Vec<(&[u8], u32)>) -> Self {
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        entries.dedup_by(|a, b| a.0 == b.0);
        let mut trie = Trie {
            nodes: vec![Node {
                first: 0,
                count: 0,
                value: NONE,
            }],
            labels: Vec::new(),
            children: Vec::new(),
            root: [NONE; 256],
        };
        // Breadth first: (node, depth, range of `entries` whose strings pass through it). In a
        // node's range the string ending at the node, if any, sorts first.
        let mut queue = std::collections::VecDeque::from([(0usize, 0usize, 0, entries.len())]);
        while let Some((node, depth, mut lo, hi)) = queue.pop_front() {
            if lo < hi && entries[lo].0.len() == depth {
                trie.nodes[node].value = entries[lo].1;
                lo += 1;
            }
            trie.nodes[node].first = trie.labels.len() as u32;
            while lo < hi {
                let byte = entries[lo].0[depth];
                let end = lo + entries[lo..hi].partition_point(|e| e.0[depth] == byte);
                let child = trie.nodes.len();
                trie.nodes.push(Node {
                    first: 0,
                    count: 0,
                    value: NONE,
                });
                trie.labels.push(byte);
                trie.children.push(child as u32);
                trie.nodes[node].count += 1;
                if node == 0 {
                    trie.root[usize::from(byte)] = child as u32;
                }
                queue.push_back((child, depth + 1, lo, end));
                lo = end;
            }
        }
        trie
    }

    /// The child of `node` along `byte`, or `NONE`.
    #[inline(always)]
    fn child(&self, node: usize, byte: u8) -> u32 {
        if node == 0 {
            return self.root[usize::from(byte)];
        }
        let Node { first, count, .. } = self.nodes[node];
        let (first, count) = (first as usize, count as usize);
        let labels = &self.labels[first..first + count];
        let found = if count <= SCAN {
            labels.iter().position(|&l| l == byte)
        } else {
            labels.binary_search(&byte).ok()
        };
        found.map_or(NONE, |i| self.children[first + i])
    }

    /// `(value, length)` of the longest string in the trie that is a prefix of `text`.
    #[inline]
    pub fn longest_prefix(&self, text: &[u8]) -> Option<(u32, usize)> {
        let mut best = None;
        let mut node = 0;
        for (i, &byte) in text.iter().enumerate() {
            let next = self.child(node, byte);
            if next == NONE {
                break;
            }
            node = next as usize;
            let value = self.nodes[node].value;
            if value != NONE {
                best = Some((value, i + 1));
            }
        }
        best
    }

    /// The values of the strings in the trie that are prefixes of `text`, shortest first, with
    /// their lengths.
    pub fn prefixes<'a>(&'a self, text: &'a [u8]) -> impl Iterator<Item = (u32, usize)> + 'a {
        let mut node = 0;
        text.iter()
            .enumerate()
            .map_while(move |(i, &byte)| {
                let next = self.child(node, byte);
                (next != NONE).then(|| {
                    node = next as usize;
                    (self.nodes[node].value, i + 1)
                })
            })
            .filter(|&(value, _)| value != NONE)
    }

    /// Bytes of memory the trie holds.
    pub fn memory(&self) -> usize {
        self.nodes.len() * std::mem::size_of::<Node>()
            + self.labels.len()
            + self.children.len() * 4
            + std::mem::size_of_val(&self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_and_prefixes() {
        let words: Vec<&[u8]> = vec![b"a", b"ab", b"abcd", b"b", b"bc", b"abcde", b"x"];
        let trie = Trie::new(
            words
                .iter()
                .enumerate()
                .map(|(i, w)| (*w, i as u32))
                .collect(),
        );
        assert_eq!(trie.longest_prefix(b"abcx"), Some((1, 2)));
        assert_eq!(trie.longest_prefix(b"abcdef"), Some((5, 5)));
        assert_eq!(trie.longest_prefix(b"bcd"), Some((4, 2)));
        assert_eq!(trie.longest_prefix(b"c"), None);
        assert_eq!(trie.longest_prefix(b""), None);
        let found: Vec<_> = trie.prefixes(b"abcdez").collect();
        assert_eq!(found, [(0, 1), (1, 2), (2, 4), (5, 5)]);
    }

    /// Wide nodes (binary searched) and narrow ones (scanned) find the same strings.
    #[test]
    fn every_string_is_found_under_a_wide_node() {
        let words: Vec<Vec<u8>> = (0..=255u8)
            .flat_map(|b| [vec![b'q', b], vec![b'q', b, b'r']])
            .collect();
        let trie = Trie::new(
            words
                .iter()
                .enumerate()
                .map(|(i, w)| (&w[..], i as u32))
                .collect(),
        );
        for (i, w) in words.iter().enumerate() {
            assert_eq!(trie.longest_prefix(w), Some((i as u32, w.len())));
        }
        assert_eq!(trie.longest_prefix(b"q"), None);
    }
}
