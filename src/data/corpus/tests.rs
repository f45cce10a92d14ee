use super::*;
use crate::tokenizer::TokenizerFiles;

struct Fixture {
    dir: tempfile::TempDir,
    tokenizer: TextTokenizer,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    crate::testing::write_tiny_tokenizer(dir.path()).unwrap();
    let tokenizer = TextTokenizer::from_files(&TokenizerFiles {
        tokenizer_json: Some(dir.path().join("tokenizer.json")),
        ..Default::default()
    })
    .unwrap();
    Fixture { dir, tokenizer }
}

impl Fixture {
    /// Three text shards of `docs` documents each, sentences of distinct words.
    fn write_shards(&self, docs: usize) -> String {
        let words = ["the", "movie", "was", "good", "bad", "a", "film"];
        for shard in 0..3 {
            let mut text = String::new();
            for doc in 0..docs {
                for sentence in 0..(1 + (shard + doc) % 4) {
                    let n = 2 + (shard * 7 + doc * 3 + sentence) % 9;
                    let line: Vec<&str> = (0..n).map(|i| words[(i + doc) % words.len()]).collect();
                    text.push_str(&line.join(" "));
                    text.push('\n');
                }
                text.push('\n');
            }
            std::fs::write(self.dir.path().join(format!("shard{shard}.txt")), text).unwrap();
        }
        format!("{}/shard*.txt", self.dir.path().display())
    }

    fn corpus(&self, pattern: &str, shuffle_buffer: usize, max_seq_len: usize) -> Corpus {
        let files = [pattern.to_string()];
        let settings = CorpusSettings {
            files: &files,
            text_field: "text",
            shuffle_buffer,
            seed: 7,
            max_seq_len,
        };
        Corpus::open(&settings, &self.tokenizer).unwrap()
    }
}

fn all_rows(corpus: &Corpus, epoch: usize, skip: usize) -> Vec<Vec<u32>> {
    let mut rows = corpus.epoch(epoch, skip);
    let mut out = Vec::new();
    loop {
        let (batch, ended) = rows.next_batch(5).unwrap();
        out.extend(batch.into_iter().map(|e| e.ids));
        if ended {
            return out;
        }
    }
}

fn sorted(mut rows: Vec<Vec<u32>>) -> Vec<Vec<u32>> {
    rows.sort();
    rows
}

#[test]
fn documents_are_packed_into_full_segments_with_specials() {
    let f = fixture();
    let corpus = f.corpus(&f.write_shards(6), 0, 12);
    let (cls, sep) = (2, 3);
    let rows = all_rows(&corpus, 0, 0);
    assert!(rows
        .iter()
        .all(|r| r.len() <= 12 && r[0] == cls && r[r.len() - 1] == sep));
    // The text of the first shard's documents, in order, is the segments' text.
    let first = std::fs::read_to_string(&corpus.files()[0]).unwrap();
    let mut expected: Vec<Vec<u32>> = Vec::new();
    for doc in first.split("\n\n").filter(|d| !d.trim().is_empty()) {
        let ids: Vec<u32> = doc
            .lines()
            .flat_map(|l| f.tokenizer.ids(l).unwrap())
            .collect();
        expected.extend(ids.chunks(10).map(|c| [&[cls], c, &[sep]].concat()));
    }
    assert_eq!(rows[..expected.len()], expected[..]);
    assert!(rows.iter().filter(|r| r.len() == 12).count() > rows.len() / 3);
}

#[test]
fn each_epoch_is_a_seeded_shuffle_of_every_segment_once() {
    let f = fixture();
    let pattern = f.write_shards(20);
    let plain = all_rows(&f.corpus(&pattern, 0, 12), 0, 0);
    let shuffled = f.corpus(&pattern, 16, 12);
    let epoch0 = all_rows(&shuffled, 0, 0);
    assert_eq!(epoch0, all_rows(&shuffled, 0, 0), "same seed and epoch");
    assert_ne!(epoch0, plain);
    assert_eq!(sorted(epoch0.clone()), sorted(plain.clone()));
    let epoch1 = all_rows(&shuffled, 1, 0);
    assert_ne!(epoch1, epoch0);
    assert_eq!(sorted(epoch1), sorted(plain));
}

#[test]
fn skipping_continues_with_the_same_next_row() {
    let f = fixture();
    let corpus = f.corpus(&f.write_shards(20), 16, 12);
    let whole = all_rows(&corpus, 3, 0);
    for skip in [0, 1, 17, whole.len() - 1, whole.len(), whole.len() + 5] {
        let rest = all_rows(&corpus, 3, skip);
        assert_eq!(rest, whole[skip.min(whole.len())..], "skip {skip}");
    }
}

#[test]
fn batches_say_when_the_epoch_ends() {
    let f = fixture();
    let corpus = f.corpus(&f.write_shards(4), 8, 12);
    let n = all_rows(&corpus, 0, 0).len();
    let mut rows = corpus.epoch(0, 0);
    let mut seen = 0;
    loop {
        let (batch, ended) = rows.next_batch(4).unwrap();
        seen += batch.len();
        assert_eq!(ended, seen == n, "after {seen} of {n}");
        if ended {
            assert!(!batch.is_empty());
            break;
        }
        assert_eq!(batch.len(), 4);
    }
    assert_eq!(rows.next_batch(4).unwrap(), (Vec::new(), true));
    // A reader stopped mid-epoch is joined, not left running.
    let mut early = corpus.epoch(0, 0);
    early.next_batch(1).unwrap();
    drop(early);
}

#[test]
fn a_bad_shard_is_named_when_the_reader_reaches_it() {
    let f = fixture();
    let path = f.dir.path().join("bad.jsonl");
    std::fs::write(&path, "{\"text\": \"the movie\"}\n{\"body\": \"x\"}\n").unwrap();
    let corpus = f.corpus(&path.display().to_string(), 0, 12);
    let mut rows = corpus.epoch(0, 0);
    let first = rows.next_batch(1).unwrap();
    assert_eq!(first.0.len(), 1);
    let err = rows.next_batch(1).unwrap_err();
    assert!(
        err.to_string().contains("bad.jsonl:2: text: missing"),
        "{err}"
    );
}

#[test]
fn a_sequence_length_without_room_for_text_is_refused() {
    let f = fixture();
    let files = [f.write_shards(1)];
    let settings = CorpusSettings {
        files: &files,
        text_field: "text",
        shuffle_buffer: 0,
        seed: 0,
        max_seq_len: 2,
    };
    let err = Corpus::open(&settings, &f.tokenizer).err().unwrap();
    assert!(
        err.to_string().contains("max_seq_len: 2: must leave room"),
        "{err}"
    );
}
