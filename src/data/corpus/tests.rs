use super::chunks::ChunkStream;
use super::*;
use crate::tokenizer::TokenizerFiles;
use crate::train::cluster::{NodeSpec, Rendezvous, Start};
use crate::train::parallel::{AllReduce, ThreadAllReduce};
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};

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
            form: Form::Segments {
                text_field: "text".into(),
            },
            shuffle_buffer,
            seed: 7,
            max_seq_len,
            token_cache: None,
        };
        Corpus::open(&settings, &self.tokenizer).unwrap()
    }
}

/// Every row of `epoch`, chunk by chunk, as one replica reads them; the same read
/// inline and read ahead on a thread.
fn all_rows(corpus: &Corpus, epoch: usize) -> Vec<Vec<u32>> {
    let inline = rows_read(corpus, epoch, false);
    assert_eq!(rows_read(corpus, epoch, true), inline, "read ahead");
    inline
}

fn rows_read(corpus: &Corpus, epoch: usize, ahead: bool) -> Vec<Vec<u32>> {
    let mut stream = ChunkStream::open(corpus, epoch, (0, 1), ahead).unwrap();
    let mut out = Vec::new();
    loop {
        let chunk = stream.next_chunk(5, &|v| Ok(v)).unwrap();
        out.extend(chunk.rows.into_iter().map(|r| r.unwrap().ids));
        if chunk.ended {
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
    let rows = all_rows(&corpus, 0);
    assert!(rows
        .iter()
        .all(|r| r.len() <= 12 && r[0] == cls && r[r.len() - 1] == sep));
    // The text of the shards' documents is the segments' text.
    let mut expected: Vec<Vec<u32>> = Vec::new();
    for file in corpus.files() {
        let text = std::fs::read_to_string(file.local().unwrap()).unwrap();
        for doc in text.split("\n\n").filter(|d| !d.trim().is_empty()) {
            let ids: Vec<u32> = doc
                .lines()
                .flat_map(|l| f.tokenizer.ids(l).unwrap())
                .collect();
            expected.extend(ids.chunks(10).map(|c| [&[cls], c, &[sep]].concat()));
        }
    }
    assert_eq!(sorted(rows.clone()), sorted(expected));
    assert!(rows.iter().filter(|r| r.len() == 12).count() > rows.len() / 3);
}

#[test]
fn a_document_without_blank_lines_is_packed_in_pieces_of_unit_lines() {
    let f = fixture();
    let path = f.dir.path().join("long.txt");
    let lines = vec!["the movie"; UNIT_LINES * 2 + 3];
    std::fs::write(&path, lines.join("\n")).unwrap();
    let corpus = f.corpus(&path.display().to_string(), 0, 1000);
    let mut lengths: Vec<usize> = all_rows(&corpus, 0).iter().map(Vec::len).collect();
    lengths.sort();
    // Two words a line, [CLS] and [SEP] around each piece.
    assert_eq!(
        lengths,
        vec![3 * 2 + 2, UNIT_LINES * 2 + 2, UNIT_LINES * 2 + 2]
    );
}

#[test]
fn each_epoch_is_a_seeded_shuffle_of_every_segment_once() {
    let f = fixture();
    let pattern = f.write_shards(20);
    let plain = all_rows(&f.corpus(&pattern, 0, 12), 0);
    let shuffled = f.corpus(&pattern, 16, 12);
    let epoch0 = all_rows(&shuffled, 0);
    assert_eq!(epoch0, all_rows(&shuffled, 0), "same seed and epoch");
    assert_ne!(epoch0, plain);
    assert_eq!(sorted(epoch0.clone()), sorted(plain.clone()));
    let epoch1 = all_rows(&shuffled, 1);
    assert_ne!(epoch1, epoch0);
    assert_eq!(sorted(epoch1), sorted(plain));
}

type ChunkRows = (Vec<usize>, Vec<Option<Vec<u32>>>);

/// Each replica's rows of every chunk of an epoch, merged by place in the chunk, with
/// the chunks' lengths, for the replicas of `group` in threads. Checks that the
/// replicas agree on the lengths and that no row is read twice.
fn read_by_replicas(corpus: &Corpus, group: &[Box<dyn AllReduce>]) -> Vec<ChunkRows> {
    let world = group.len();
    let per_replica: Vec<Vec<ChunkRows>> = std::thread::scope(|s| {
        let handles: Vec<_> = group
            .iter()
            .map(|comm| {
                s.spawn(move || {
                    let exchange = |v: Vec<f32>| -> Result<Vec<f32>> {
                        let n = v.len();
                        let t = Tensor::from_vec(v, n, &Device::Cpu)?;
                        Ok(comm.all_reduce_sum(vec![t])?[0].to_vec1()?)
                    };
                    // Odd replicas read ahead on a thread, even ones inline.
                    let (rank, ahead) = (comm.rank(), comm.rank() % 2 == 1);
                    let mut stream = ChunkStream::open(corpus, 1, (rank, world), ahead).unwrap();
                    let mut chunks = Vec::new();
                    loop {
                        let c = stream.next_chunk(7, &exchange).unwrap();
                        let rows = c.rows.into_iter().map(|r| r.map(|e| e.ids)).collect();
                        chunks.push((c.lengths, rows));
                        if c.ended {
                            return chunks;
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut merged = per_replica[0].clone();
    for other in &per_replica[1..] {
        assert_eq!(other.len(), merged.len());
        for ((lengths, rows), (their_lengths, theirs)) in merged.iter_mut().zip(other) {
            assert_eq!(lengths, their_lengths, "replicas disagree on a chunk");
            for (row, their) in rows.iter_mut().zip(theirs) {
                assert!(row.is_none() || their.is_none(), "a row read twice");
                if their.is_some() {
                    *row = their.clone();
                }
            }
        }
    }
    merged
}

fn threads(world: usize) -> Vec<Box<dyn AllReduce>> {
    ThreadAllReduce::group(world)
        .into_iter()
        .map(|c| Box::new(c) as Box<dyn AllReduce>)
        .collect()
}

/// A group of `nnodes` joined over TCP on this machine.
fn tcp_nodes(nnodes: usize) -> Vec<Box<dyn AllReduce>> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spec = move |node_rank| NodeSpec {
        nnodes,
        node_rank,
        master: format!("127.0.0.1:{port}"),
        join_timeout: std::time::Duration::from_secs(20),
    };
    let followers: Vec<_> = (1..nnodes)
        .map(|rank| {
            std::thread::spawn(move || {
                let mut node = Rendezvous::join(&spec(rank), 1, "corpus").unwrap();
                node.wait_start().unwrap();
                node.into_all_reduce(nnodes)
            })
        })
        .collect();
    let mut leader = Rendezvous::join(&spec(0), 1, "corpus").unwrap();
    let start = Start {
        teacher: String::new(),
        nccl_id: None,
    };
    leader.start(&start).unwrap();
    let mut group: Vec<Box<dyn AllReduce>> = vec![Box::new(leader.into_all_reduce(nnodes))];
    group.extend(
        followers
            .into_iter()
            .map(|f| Box::new(f.join().unwrap()) as Box<dyn AllReduce>),
    );
    group
}

#[test]
fn replicas_read_every_row_once_into_the_chunks_one_replica_reads() {
    let f = fixture();
    let few = f.write_shards(30);
    let many_dir = f.dir.path().join("many");
    std::fs::create_dir(&many_dir).unwrap();
    // More shards than lanes: lanes take whole shards.
    for i in 0..LANES + 2 {
        let from = f.dir.path().join(format!("shard{}.txt", i % 3));
        std::fs::copy(from, many_dir.join(format!("{i}.txt"))).unwrap();
    }
    let many = format!("{}/*.txt", many_dir.display());
    for pattern in [few, many] {
        let corpus = f.corpus(&pattern, 16, 12);
        let alone = read_by_replicas(&corpus, &threads(1));
        let rows: Vec<Vec<u32>> = alone
            .iter()
            .flat_map(|(_, rows)| rows.iter().map(|r| r.clone().unwrap()))
            .collect();
        assert_eq!(sorted(rows), sorted(all_rows(&corpus, 1)));
        for (lengths, rows) in &alone {
            let held: Vec<usize> = rows.iter().map(|r| r.as_ref().unwrap().len()).collect();
            assert_eq!(&held, lengths);
        }
        for (group, what) in [(threads(2), "2 threads"), (threads(3), "3 threads")] {
            let merged = read_by_replicas(&corpus, &group);
            assert!(merged == alone, "{what} read other chunks ({pattern})");
        }
        let merged = read_by_replicas(&corpus, &tcp_nodes(2));
        assert!(
            merged == alone,
            "2 nodes over TCP read other chunks ({pattern})"
        );
    }
}

#[test]
fn chunks_say_when_the_epoch_ends() {
    let f = fixture();
    let corpus = f.corpus(&f.write_shards(4), 8, 12);
    let n = all_rows(&corpus, 0).len();
    let mut stream = ChunkStream::open(&corpus, 0, (0, 1), false).unwrap();
    let mut seen = 0;
    loop {
        let chunk = stream.next_chunk(4, &|v| Ok(v)).unwrap();
        seen += chunk.rows.len();
        assert_eq!(chunk.ended, seen == n, "after {seen} of {n}");
        if chunk.ended {
            assert!(!chunk.rows.is_empty());
            break;
        }
        assert_eq!(chunk.rows.len(), 4);
    }
    let after = stream.next_chunk(4, &|v| Ok(v)).unwrap();
    assert!(after.rows.is_empty() && after.ended);
    // Readers stopped mid-epoch are joined, not left running.
    let mut early = ChunkStream::open(&corpus, 0, (0, 1), true).unwrap();
    early.next_chunk(1, &|v| Ok(v)).unwrap();
    drop(early);
    assert!(ChunkStream::open(&corpus, 0, (0, LANES + 1), false).is_err());
}

#[test]
fn a_bad_shard_is_named_when_the_reader_reaches_it() {
    let f = fixture();
    let path = f.dir.path().join("bad.jsonl");
    std::fs::write(&path, "{\"text\": \"the movie\"}\n{\"body\": \"x\"}\n").unwrap();
    let corpus = f.corpus(&path.display().to_string(), 0, 12);
    // The bad record is the second document: lane 1's first.
    for ahead in [false, true] {
        let mut stream = ChunkStream::open(&corpus, 0, (0, 1), ahead).unwrap();
        let err = stream.next_chunk(1, &|v| Ok(v)).unwrap_err();
        assert!(
            err.to_string().contains("bad.jsonl:2: text: missing"),
            "{err}"
        );
    }
}

#[test]
fn a_sequence_length_without_room_for_text_is_refused() {
    let f = fixture();
    let files = [f.write_shards(1)];
    let settings = CorpusSettings {
        files: &files,
        form: Form::Segments {
            text_field: "text".into(),
        },
        shuffle_buffer: 0,
        seed: 0,
        max_seq_len: 2,
        token_cache: None,
    };
    let err = Corpus::open(&settings, &f.tokenizer).err().unwrap();
    assert!(
        err.to_string().contains("max_seq_len: 2: must leave room"),
        "{err}"
    );
}

fn examples_corpus(f: &Fixture, path: &Path, kind: ExampleLines) -> Corpus {
    let files = [path.display().to_string()];
    let settings = CorpusSettings {
        files: &files,
        form: Form::Examples(kind),
        shuffle_buffer: 8,
        seed: 3,
        max_seq_len: 9,
        token_cache: None,
    };
    Corpus::open(&settings, &f.tokenizer).unwrap()
}

#[test]
fn a_streamed_transfer_set_gives_each_line_once_tokenised_as_the_task_rows() {
    let f = fixture();
    let words = ["the", "movie", "was", "good", "bad", "a", "film"];
    let lines: Vec<(String, String)> = (0..40)
        .map(|i| {
            let a: Vec<&str> = (0..1 + i % 6).map(|j| words[(i + j) % 7]).collect();
            (a.join(" "), words[i % 7].to_string())
        })
        .collect();
    let path = f.dir.path().join("pairs.tsv.gz");
    let text: String = lines.iter().map(|(a, b)| format!("{a}\t{b}\n\n")).collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, text.as_bytes()).unwrap();
    std::fs::write(&path, gz.finish().unwrap()).unwrap();
    let expected: Vec<Vec<u32>> = lines
        .iter()
        .map(|(a, b)| f.tokenizer.encode(a, Some(b), 9).unwrap().ids)
        .collect();
    let rows = all_rows(&examples_corpus(&f, &path, ExampleLines::Text), 0);
    assert_ne!(rows, expected, "shuffled");
    assert_eq!(sorted(rows), sorted(expected));

    // Augmented JSONL records read the same pairs.
    let jsonl = f.dir.path().join("augmented.jsonl");
    let records: String = lines
        .iter()
        .map(|(a, b)| {
            let row =
                serde_json::json!({"source_row": 0, "method": "mlm", "text_a": a, "text_b": b});
            row.to_string() + "\n"
        })
        .collect();
    std::fs::write(&jsonl, records).unwrap();
    let rows = all_rows(&examples_corpus(&f, &jsonl, ExampleLines::Augmented), 0);
    assert_eq!(
        sorted(rows),
        sorted(
            lines
                .iter()
                .map(|(a, b)| f.tokenizer.encode(a, Some(b), 9).unwrap().ids)
                .collect()
        )
    );
}

#[test]
fn a_bad_line_of_a_streamed_transfer_set_is_named() {
    let f = fixture();
    let path = f.dir.path().join("mixed.txt");
    std::fs::write(&path, "the movie\tgood\nbad film\n").unwrap();
    let corpus = examples_corpus(&f, &path, ExampleLines::Text);
    let mut stream = ChunkStream::open(&corpus, 0, (0, 1), false).unwrap();
    let err = stream.next_chunk(4, &|v| Ok(v)).unwrap_err().to_string();
    assert!(
        err.contains("mixed.txt:2: expected 2 tab-separated field(s), found 1"),
        "{err}"
    );
    let files = ["nowhere.txt".to_string()];
    let settings = CorpusSettings {
        files: &files,
        form: Form::Examples(ExampleLines::Text),
        shuffle_buffer: 0,
        seed: 0,
        max_seq_len: 9,
        token_cache: None,
    };
    let err = Corpus::open(&settings, &f.tokenizer)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nowhere.txt: path: is not a file"), "{err}");
}

fn cached_corpus(f: &Fixture, pattern: &str, root: &Path, max_seq_len: usize) -> Corpus {
    let files = [pattern.to_string()];
    let settings = CorpusSettings {
        files: &files,
        form: Form::Segments {
            text_field: "text".into(),
        },
        shuffle_buffer: 16,
        seed: 7,
        max_seq_len,
        token_cache: Some(root),
    };
    Corpus::open(&settings, &f.tokenizer).unwrap()
}

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn a_lane_stopped_mid_shard_leaves_no_cache_file_behind() {
    let f = fixture();
    // Lanes of 3,000-document shards stop, their queues full, long before the end.
    let corpus = cached_corpus(&f, &f.write_shards(3000), &f.dir.path().join("tc"), 12);
    let mut stream = ChunkStream::open(&corpus, 0, (0, 1), true).unwrap();
    stream.next_chunk(4, &|v| Ok(v)).unwrap();
    drop(stream);
    // Parts read whole before the stop are cached; the others left nothing, not even
    // their temporary files.
    let left = cache_files(corpus.token_cache().unwrap());
    assert!(left.len() < 3 * LANES, "{left:?}");
    assert!(
        left.iter()
            .all(|p| p.extension().is_some_and(|e| e == "tok")),
        "{left:?}"
    );
}

#[test]
fn a_token_cache_is_written_whole_once_then_read_instead_of_the_text() {
    let f = fixture();
    let pattern = f.write_shards(20);
    let root = f.dir.path().join("token-cache");
    let plain = all_rows(&f.corpus(&pattern, 16, 12), 1);
    let corpus = cached_corpus(&f, &pattern, &root, 12);
    assert_eq!(
        all_rows(&corpus, 1),
        plain,
        "the first epoch, tokenised and cached"
    );
    let dir = corpus.token_cache().unwrap().to_path_buf();
    let files = cache_files(&dir);
    // Three shards shared by the lanes: a file per shard and lane, no temporary left.
    assert_eq!(files.len(), 3 * LANES, "{files:?}");
    assert!(files
        .iter()
        .all(|p| p.extension().is_some_and(|e| e == "tok")));
    assert_eq!(all_rows(&corpus, 1), plain, "read back from the cache");

    // What is read is the cache: a changed id there shows in the rows.
    let first = files
        .iter()
        .find(|p| std::fs::metadata(p).unwrap().len() > 0)
        .unwrap();
    let mut bytes = std::fs::read(first).unwrap();
    assert_eq!(
        bytes[8..12],
        2u32.to_le_bytes(),
        "[CLS] opens the first row"
    );
    bytes[8..12].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(first, bytes).unwrap();
    let rows = all_rows(&corpus, 1);
    assert_eq!(rows.iter().filter(|r| r[0] == 99).count(), 1);

    // Another sequence length is another cache; a changed shard is tokenised again.
    let other = cached_corpus(&f, &pattern, &root, 10);
    assert_ne!(other.token_cache(), corpus.token_cache());
    let shard = f.dir.path().join("shard0.txt");
    let text = std::fs::read_to_string(&shard).unwrap();
    std::fs::write(&shard, text + "a new film\n\n").unwrap();
    let rows = all_rows(&corpus, 1);
    assert_eq!(rows.len(), plain.len() + 1);
    assert_eq!(cache_files(&dir).len(), 4 * LANES);
}
