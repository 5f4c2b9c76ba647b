//! A byte trie over token strings, for "the longest token that starts this text".
//!
//! Backtracking BPE asks this once per token it places, so a step must be one load: the trie is
//! a double array (Aoe's layout). Each node is a cell; the child of node `s` along byte `c` is
//! the cell `base(s) + c`, and it belongs to `s` iff its `check` is `s`. A cell holds its own
//! base and value next to its check, so walking a step reads one 12-byte cell. Bases are found
//! first-fit over the free cells (a union-find of "next free cell" keeps that search short), in
//! breadth-first order, so the nodes near the root, the most visited, sit close together.

/// Marks "no value", "no parent" and a free cell.
pub const NONE: u32 = u32::MAX;

/// One node: `check` is its parent's cell (`NONE`: the cell is free or the root), `base` where
/// its children start, `value` the value of the string that ends here (`NONE`: none).
#[derive(Clone, Copy, Debug)]
struct Cell {
    base: u32,
    check: u32,
    value: u32,
}

const FREE: Cell = Cell {
    base: 0,
    check: NONE,
    value: NONE,
};

/// A fixed set of byte strings, each with a `u32` value.
#[derive(Clone)]
pub struct Trie {
    /// Cell 0 is the root. Every base is at most `len - 256`, so `base + byte` is always a cell.
    cells: Vec<Cell>,
}

impl std::fmt::Debug for Trie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used = self.cells.iter().filter(|c| c.check != NONE).count() + 1;
        write!(f, "Trie({used} nodes in {} cells)", self.cells.len())
    }
}

/// The smallest free cell at or after each cell, with path halving.
struct FreeCells {
    next: Vec<u32>,
    /// No cell before this one is free.
    first: usize,
}

impl FreeCells {
    fn find(&mut self, mut p: usize) -> usize {
        while p < self.next.len() && self.next[p] as usize != p {
            let up = self.next[p] as usize;
            if up < self.next.len() {
                self.next[p] = self.next[up];
            }
            p = up;
        }
        p
    }

    /// Marks cell `p` used (growing the set so that `p` and the cell after it exist).
    fn take(&mut self, p: usize) {
        while self.next.len() < p + 2 {
            self.next.push(self.next.len() as u32);
        }
        self.next[p] = p as u32 + 1;
    }
}

/// Holes tried for a node before it is placed past the end.
const TRIES: usize = 16;

/// The first base (at least 1) at which every child label of a node lands on a free cell,
/// first fit; those cells are then taken. `None` for a node without children.
fn place(free: &mut FreeCells, labels: &[(u8, usize, usize)]) -> Option<usize> {
    let first = usize::from(labels.first()?.0);
    // Every cell before the first free one is taken: start there, not at the array's start.
    free.first = free.find(free.first);
    let mut p = free.find((first + 1).max(free.first));
    let mut tries = 0;
    let base = loop {
        let base = p - first;
        let fits = labels.iter().all(|&(c, _, _)| {
            let q = base + usize::from(c);
            q >= free.next.len() || free.next[q] as usize == q
        });
        if fits {
            break base;
        }
        // A wide node rarely fits the scattered holes: after a few tries, past the end (the
        // holes it skips are filled by the many one-child nodes that follow).
        tries += 1;
        p = if tries < TRIES {
            free.find(p + 1)
        } else {
            p.max(free.next.len())
        };
    };
    for &(c, _, _) in labels {
        free.take(base + usize::from(c));
    }
    Some(base)
}

/// Strings sorted and copied end to end, so that building reads them in order from one buffer.
struct Sorted {
    bytes: Vec<u8>,
    /// String `i` is `bytes[starts[i]..starts[i + 1]]`.
    starts: Vec<usize>,
    values: Vec<u32>,
}

impl Sorted {
    fn new(mut entries: Vec<(&[u8], u32)>) -> Self {
        // Most comparisons are settled by the first eight bytes as one big-endian number
        // (zero-padded, so a prefix never sorts after its extensions); ties compare the bytes.
        let head = |b: &[u8]| {
            let mut word = [0u8; 8];
            let n = b.len().min(8);
            word[..n].copy_from_slice(&b[..n]);
            u64::from_be_bytes(word)
        };
        let mut keyed: Vec<(u64, &[u8], u32)> =
            entries.drain(..).map(|(b, v)| (head(b), b, v)).collect();
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        keyed.dedup_by(|a, b| a.1 == b.1);
        let mut sorted = Sorted {
            bytes: Vec::with_capacity(keyed.iter().map(|e| e.1.len()).sum()),
            starts: Vec::with_capacity(keyed.len() + 1),
            values: Vec::with_capacity(keyed.len()),
        };
        for (_, b, v) in keyed {
            sorted.starts.push(sorted.bytes.len());
            sorted.bytes.extend_from_slice(b);
            sorted.values.push(v);
        }
        sorted.starts.push(sorted.bytes.len());
        sorted
    }

    fn len(&self) -> usize {
        self.values.len()
    }

    fn string(&self, i: usize) -> &[u8] {
        &self.bytes[self.starts[i]..self.starts[i + 1]]
    }
}

impl Trie {
    /// The trie of `entries` (non-empty strings; of repeated strings one is kept), and for each
    /// string's value the value of its longest proper prefix in the set (`NONE`: none), found
    /// on the way down.
    pub fn new(entries: Vec<(&[u8], u32)>) -> (Self, Vec<(u32, u32)>) {
        let sorted = Sorted::new(entries);
        let mut trie = Trie {
            cells: vec![FREE; 256],
        };
        let mut free = FreeCells {
            next: Vec::new(),
            first: 0,
        };
        free.take(0);
        let mut labels = Vec::with_capacity(256);
        let mut prefixes = Vec::with_capacity(sorted.len());
        // Breadth first: (cell, depth, range of sorted strings that pass through it, value of
        // the longest string ending above it). In a node's range the string ending at the
        // node, if any, sorts first.
        let mut queue = std::collections::VecDeque::from([(0usize, 0usize, 0, sorted.len(), NONE)]);
        while let Some((cell, depth, mut lo, hi, mut above)) = queue.pop_front() {
            if lo < hi && sorted.string(lo).len() == depth {
                let value = sorted.values[lo];
                trie.cells[cell].value = value;
                prefixes.push((value, above));
                above = value;
                lo += 1;
            }
            // The children: one label and range each (strings are scanned in order, so the
            // walk over all nodes reads the sorted bytes a few times, not at random).
            labels.clear();
            while lo < hi {
                let byte = sorted.string(lo)[depth];
                let mut end = lo + 1;
                while end < hi && sorted.string(end)[depth] == byte {
                    end += 1;
                }
                labels.push((byte, lo, end));
                lo = end;
            }
            let Some(base) = place(&mut free, &labels) else {
                continue;
            };
            trie.cells[cell].base = base as u32;
            if trie.cells.len() < base + 256 {
                trie.cells.resize(base + 256, FREE);
            }
            for &(c, lo, end) in &labels {
                let child = base + usize::from(c);
                trie.cells[child].check = cell as u32;
                queue.push_back((child, depth + 1, lo, end, above));
            }
        }
        (trie, prefixes)
    }

    /// `(value, length)` of the longest string in the trie that is a prefix of `text`.
    #[inline]
    pub fn longest_prefix(&self, text: &[u8]) -> Option<(u32, usize)> {
        let mut best = None;
        let mut s = 0;
        // The base of `s`, carried from the step that reached it rather than read again.
        let mut base = self.cells.first().map_or(0, |root| root.base as usize);
        for (i, &byte) in text.iter().enumerate() {
            let t = base + usize::from(byte);
            let Some(&cell) = self.cells.get(t) else {
                break;
            };
            if cell.check as usize != s || t == 0 {
                break;
            }
            (s, base) = (t, cell.base as usize);
            if cell.value != NONE {
                best = Some((cell.value, i + 1));
            }
        }
        best
    }

    /// Bytes of memory the trie holds.
    pub fn memory(&self) -> usize {
        self.cells.len() * std::mem::size_of::<Cell>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trie_of(words: &[&[u8]]) -> (Trie, Vec<(u32, u32)>) {
        Trie::new(
            words
                .iter()
                .enumerate()
                .map(|(i, w)| (*w, i as u32))
                .collect(),
        )
    }

    #[test]
    fn longest_prefix_and_shorter_prefixes() {
        let (trie, mut shorter) = trie_of(&[b"a", b"ab", b"abcd", b"b", b"bc", b"abcde", b"x"]);
        assert_eq!(trie.longest_prefix(b"abcx"), Some((1, 2)));
        assert_eq!(trie.longest_prefix(b"abcdef"), Some((5, 5)));
        assert_eq!(trie.longest_prefix(b"bcd"), Some((4, 2)));
        assert_eq!(trie.longest_prefix(b"c"), None);
        assert_eq!(trie.longest_prefix(b""), None);
        shorter.sort_unstable();
        let expected = [
            (0, NONE),
            (1, 0),
            (2, 1),
            (3, NONE),
            (4, 3),
            (5, 2),
            (6, NONE),
        ];
        assert_eq!(shorter, expected);
    }

    /// A node with every byte as a child, beside narrow ones (bases placed past the holes).
    #[test]
    fn every_string_is_found_under_a_wide_node() {
        let words: Vec<Vec<u8>> = (0..=255u8)
            .flat_map(|b| [vec![b'q', b], vec![b'q', b, b'r'], vec![b, b'z', b'z']])
            .collect();
        let refs: Vec<&[u8]> = words.iter().map(Vec::as_slice).collect();
        let (trie, _) = trie_of(&refs);
        for (i, w) in words.iter().enumerate() {
            assert_eq!(trie.longest_prefix(w), Some((i as u32, w.len())), "{w:?}");
        }
        assert_eq!(trie.longest_prefix(b"q"), None);
    }
}
