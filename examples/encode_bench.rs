use std::time::Instant;
fn main() {
    let text = std::fs::read_to_string("/tmp/stories-train.txt").unwrap();
    let text = &text[..50_000_000];
    let tok = lmforge::format::load(std::path::Path::new("/tmp/gpt2.json")).unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let ids = tok.encode(text);
        println!(
            "encode: {:.1} MB/s ({} ids)",
            50.0 / t.elapsed().as_secs_f64(),
            ids.len()
        );
    }
    let t = Instant::now();
    let mut n = 0;
    tok.pattern().for_each(text, |_| n += 1);
    println!("scan only: {:.1} MB/s", 50.0 / t.elapsed().as_secs_f64());
}
