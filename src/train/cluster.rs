//! Several processes, usually one per machine, in one data-parallel run.
//!
//! Node 0 listens on the master address. Every other node connects, says who it is
//! (its rank, the number of nodes, its local workers, the recipe's hash) and is checked
//! against node 0 before any work starts, so a wrong command fails in seconds, not after
//! the teacher's fine-tuning. When node 0 reaches the training stages it sends each node
//! a [`Start`]: the teacher to load and, for NCCL, the group id (the TCP bootstrap of
//! NCCL). The same connections then carry [`TcpAllReduce`] when there is no NCCL.
//!
//! Messages are frames: a little-endian u64 length, then the bytes (JSON, or f32 values).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::parallel::{flatten_f32, unflatten_like, AllReduce};
use crate::{Error, Result};

const PROTOCOL: u32 = 1;

/// This process's place in a run over several nodes.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub nnodes: usize,
    pub node_rank: usize,
    /// `host:port` of node 0.
    pub master: String,
    /// How long a node keeps trying to reach node 0, and node 0 waits for the others.
    pub join_timeout: Duration,
}

impl NodeSpec {
    pub fn validate(&self) -> Result<()> {
        if self.nnodes < 2 {
            return Err(Error::invalid(
                "--nnodes",
                self.nnodes.to_string(),
                "a run over several nodes needs at least 2",
            ));
        }
        if self.node_rank >= self.nnodes {
            return Err(Error::invalid(
                "--node-rank",
                self.node_rank.to_string(),
                format!(
                    "expected 0 to {} for {} nodes",
                    self.nnodes - 1,
                    self.nnodes
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    protocol: u32,
    node_rank: usize,
    nnodes: usize,
    local_workers: usize,
    recipe: String,
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Welcome,
    Refused(String),
}

/// What node 0 hands the other nodes when training starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Start {
    /// The teacher every node loads: node 0's fine-tuned copy, in the shared run folder,
    /// when it fine-tuned one.
    pub teacher: String,
    /// The NCCL group id (128 bytes), when the nodes use NCCL.
    pub nccl_id: Option<Vec<u8>>,
}

/// Node 0's side: a connection to each other node, in rank order; or another node's:
/// its connection to node 0.
pub enum Rendezvous {
    Leader { peers: Vec<TcpStream> },
    Follower { node_rank: usize, stream: TcpStream },
}

fn send_frame(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(&(bytes.len() as u64).to_le_bytes())?;
    stream.write_all(bytes)?;
    stream.flush()
}

/// Frames larger than this are a protocol error, not an allocation.
const MAX_FRAME: u64 = 1 << 36;

fn recv_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 8];
    stream.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes: not a candle-distill peer"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    stream.read_exact(&mut buf)?;
    Ok(buf)
}

fn send_json<T: Serialize>(stream: &mut TcpStream, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    send_frame(stream, &bytes)
}

fn recv_json<T: for<'de> Deserialize<'de>>(stream: &mut TcpStream) -> std::io::Result<T> {
    let bytes = recv_frame(stream)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn net(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::msg(format!("{what}: {e}"))
}

fn peer_error(who: &str, e: std::io::Error) -> Error {
    Error::msg(format!(
        "{who}: connection lost ({e}); see that node's log for why it stopped"
    ))
}

impl Rendezvous {
    /// Node 0 waits for every other node; the others connect to it, retrying until
    /// `join_timeout`. `recipe` identifies the run (a hash of the resolved recipe): every
    /// node must run the same one, with the same number of local workers.
    pub fn join(spec: &NodeSpec, local_workers: usize, recipe: &str) -> Result<Rendezvous> {
        spec.validate()?;
        if spec.node_rank == 0 {
            Self::lead(spec, local_workers, recipe)
        } else {
            Self::follow(spec, local_workers, recipe)
        }
    }

    /// Node 0's socket, on every interface as torchrun's store does: the name the
    /// other nodes use for node 0 need not be one of its own addresses (NAT, aliases).
    fn listen(spec: &NodeSpec) -> Result<TcpListener> {
        let port = spec
            .master
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .ok_or_else(|| {
                Error::invalid("--master-port", spec.master.as_str(), "expected HOST:PORT")
            })?;
        let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
            Error::invalid(
                "--master-port",
                port.to_string(),
                format!("node 0 cannot listen on it: {e}"),
            )
        })?;
        listener.set_nonblocking(true).map_err(net("node 0"))?;
        Ok(listener)
    }

    /// Why node 0 turns a joining node away, if it does: another build, another shape
    /// of cluster, a rank taken or out of range, another recipe.
    fn refusal(
        hello: &Hello,
        spec: &NodeSpec,
        local_workers: usize,
        recipe: &str,
        peers: &[Option<TcpStream>],
    ) -> Option<String> {
        if hello.protocol != PROTOCOL {
            Some(format!(
                "protocol {} (node 0 speaks {PROTOCOL}): run the same build on every node",
                hello.protocol
            ))
        } else if hello.nnodes != spec.nnodes {
            Some(format!(
                "--nnodes {} (node 0 has {})",
                hello.nnodes, spec.nnodes
            ))
        } else if hello.node_rank == 0 || hello.node_rank >= spec.nnodes {
            Some(format!("--node-rank {}", hello.node_rank))
        } else if peers[hello.node_rank - 1].is_some() {
            Some(format!(
                "--node-rank {}: another node already has it",
                hello.node_rank
            ))
        } else if hello.local_workers != local_workers {
            Some(format!(
                "{} local device(s) (node 0 has {local_workers}): give every node the same number",
                hello.local_workers
            ))
        } else if hello.recipe != recipe {
            Some("a different recipe (after overrides) from node 0's".to_string())
        } else {
            None
        }
    }

    fn lead(spec: &NodeSpec, local_workers: usize, recipe: &str) -> Result<Rendezvous> {
        let listener = Self::listen(spec)?;
        tracing::info!(
            "node 0: waiting on {} for {} other node(s)",
            spec.master,
            spec.nnodes - 1
        );
        let deadline = Instant::now() + spec.join_timeout;
        let mut peers: Vec<Option<TcpStream>> = (1..spec.nnodes).map(|_| None).collect();
        while peers.iter().any(Option::is_none) {
            let mut stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        let missing: Vec<String> = peers
                            .iter()
                            .enumerate()
                            .filter(|(_, p)| p.is_none())
                            .map(|(i, _)| (i + 1).to_string())
                            .collect();
                        return Err(Error::msg(format!(
                            "node 0: node(s) {} did not join within {:?}",
                            missing.join(", "),
                            spec.join_timeout
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                Err(e) => return Err(net("node 0: accepting a node")(e)),
            };
            stream
                .set_nonblocking(false)
                .and_then(|()| stream.set_nodelay(true))
                .and_then(|()| stream.set_read_timeout(Some(spec.join_timeout)))
                .map_err(net("node 0: a joining node"))?;
            let hello: Hello = match recv_json(&mut stream) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!("node 0: ignoring a connection that is not a node: {e}");
                    continue;
                }
            };
            match Self::refusal(&hello, spec, local_workers, recipe, &peers) {
                Some(why) => {
                    tracing::warn!("node 0: refused a node: {why}");
                    let _ = send_json(&mut stream, &Reply::Refused(why));
                }
                None => {
                    let who = format!("node {}", hello.node_rank);
                    send_json(&mut stream, &Reply::Welcome)
                        .and_then(|()| stream.set_read_timeout(None))
                        .map_err(|e| peer_error(&who, e))?;
                    tracing::info!("node 0: node {} joined", hello.node_rank);
                    peers[hello.node_rank - 1] = Some(stream);
                }
            }
        }
        Ok(Rendezvous::Leader {
            peers: peers.into_iter().flatten().collect(),
        })
    }

    fn follow(spec: &NodeSpec, local_workers: usize, recipe: &str) -> Result<Rendezvous> {
        let deadline = Instant::now() + spec.join_timeout;
        let addr = spec
            .master
            .to_socket_addrs()
            .map_err(|e| {
                Error::invalid(
                    "--master-addr",
                    spec.master.as_str(),
                    format!("cannot resolve: {e}"),
                )
            })?
            .next()
            .ok_or_else(|| Error::invalid("--master-addr", spec.master.as_str(), "no address"))?;
        let mut stream = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(Error::msg(format!(
                        "node {}: cannot reach node 0 at {} within {:?}: {e}",
                        spec.node_rank, spec.master, spec.join_timeout
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let who = format!("node {} -> node 0 ({})", spec.node_rank, spec.master);
        stream.set_nodelay(true).map_err(|e| peer_error(&who, e))?;
        send_json(
            &mut stream,
            &Hello {
                protocol: PROTOCOL,
                node_rank: spec.node_rank,
                nnodes: spec.nnodes,
                local_workers,
                recipe: recipe.to_string(),
            },
        )
        .map_err(|e| peer_error(&who, e))?;
        match recv_json::<Reply>(&mut stream).map_err(|e| peer_error(&who, e))? {
            Reply::Welcome => Ok(Rendezvous::Follower {
                node_rank: spec.node_rank,
                stream,
            }),
            Reply::Refused(why) => Err(Error::msg(format!(
                "node 0 refused node {}: {why}",
                spec.node_rank
            ))),
        }
    }

    /// Node 0: tells every node to start.
    pub fn start(&mut self, start: &Start) -> Result<()> {
        let Rendezvous::Leader { peers } = self else {
            return Err(Error::msg("only node 0 starts the others"));
        };
        for (i, s) in peers.iter_mut().enumerate() {
            send_json(s, start).map_err(|e| peer_error(&format!("node {}", i + 1), e))?;
        }
        Ok(())
    }

    /// Another node: waits (as long as node 0 takes to prepare) for the start.
    pub fn wait_start(&mut self) -> Result<Start> {
        let Rendezvous::Follower { node_rank, stream } = self else {
            return Err(Error::msg("node 0 does not wait for a start"));
        };
        recv_json(stream).map_err(|e| {
            peer_error(
                &format!("node {node_rank}: waiting for node 0 to start training"),
                e,
            )
        })
    }

    /// The connections as an all-reduce group of one worker per node.
    pub fn into_all_reduce(self, nnodes: usize) -> TcpAllReduce {
        match self {
            Rendezvous::Leader { peers } => TcpAllReduce {
                rank: 0,
                world: nnodes,
                link: Mutex::new(Link::Leader(peers)),
            },
            Rendezvous::Follower { node_rank, stream } => TcpAllReduce {
                rank: node_rank,
                world: nnodes,
                link: Mutex::new(Link::Follower(stream)),
            },
        }
    }
}

enum Link {
    Leader(Vec<TcpStream>),
    Follower(TcpStream),
}

/// An all-reduce between processes over TCP, one worker per process: every worker sends
/// its values to rank 0, which sums them in rank order (as [`super::parallel::ThreadAllReduce`]
/// does, so results do not depend on timing) and sends the sums back. Meant for CPU runs
/// and for checking the multi-node path; GPUs use NCCL.
pub struct TcpAllReduce {
    rank: usize,
    world: usize,
    link: Mutex<Link>,
}

fn to_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl AllReduce for TcpAllReduce {
    fn world_size(&self) -> usize {
        self.world
    }

    fn rank(&self) -> usize {
        self.rank
    }

    fn all_reduce_sum(&self, tensors: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let mine = flatten_f32(&tensors)?
            .to_device(&Device::Cpu)?
            .to_vec1::<f32>()?;
        let mut link = self
            .link
            .lock()
            .map_err(|_| Error::msg("all-reduce: a worker panicked"))?;
        let total = match &mut *link {
            Link::Leader(peers) => {
                let mut total = mine;
                for (i, s) in peers.iter_mut().enumerate() {
                    let who = format!("all-reduce with rank {}", i + 1);
                    let theirs = from_bytes(&recv_frame(s).map_err(|e| peer_error(&who, e))?);
                    if theirs.len() != total.len() {
                        return Err(Error::msg(format!(
                            "{who}: it sent {} values, rank 0 has {}",
                            theirs.len(),
                            total.len()
                        )));
                    }
                    for (t, x) in total.iter_mut().zip(theirs) {
                        *t += x;
                    }
                }
                let bytes = to_bytes(&total);
                for (i, s) in peers.iter_mut().enumerate() {
                    send_frame(s, &bytes)
                        .map_err(|e| peer_error(&format!("all-reduce with rank {}", i + 1), e))?;
                }
                total
            }
            Link::Follower(s) => {
                let who = "all-reduce with rank 0";
                send_frame(s, &to_bytes(&mine)).map_err(|e| peer_error(who, e))?;
                let total = from_bytes(&recv_frame(s).map_err(|e| peer_error(who, e))?);
                if total.len() != mine.len() {
                    return Err(Error::msg(format!(
                        "{who}: got {} values back, sent {}",
                        total.len(),
                        mine.len()
                    )));
                }
                total
            }
        };
        let n = total.len();
        unflatten_like(&Tensor::from_vec(total, n, &Device::Cpu)?, &tensors)
    }

    fn abort(&self) {
        // Closing the connections wakes every peer blocked on them with an error.
        if let Ok(link) = self.link.try_lock() {
            match &*link {
                Link::Leader(peers) => {
                    for s in peers {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                }
                Link::Follower(s) => {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn spec(port: u16, nnodes: usize, node_rank: usize) -> NodeSpec {
        NodeSpec {
            nnodes,
            node_rank,
            master: format!("127.0.0.1:{port}"),
            join_timeout: Duration::from_secs(20),
        }
    }

    /// Three nodes meet, get node 0's start message, then sum over TCP in rank order.
    #[test]
    fn nodes_meet_start_and_sum() {
        let port = free_port();
        let start = Start {
            teacher: "runs/x/teacher-finetune/checkpoints/best".into(),
            nccl_id: Some((0..128).collect()),
        };
        let followers: Vec<_> = (1..3)
            .map(|rank| {
                let expected = start.clone();
                std::thread::spawn(move || {
                    let mut r = Rendezvous::join(&spec(port, 3, rank), 1, "abc").unwrap();
                    assert_eq!(r.wait_start().unwrap(), expected);
                    let group = r.into_all_reduce(3);
                    let mine = Tensor::new(&[rank as f32, 0.5], &Device::Cpu).unwrap();
                    group.all_reduce_sum(vec![mine]).unwrap()[0]
                        .to_vec1::<f32>()
                        .unwrap()
                })
            })
            .collect();
        let mut leader = Rendezvous::join(&spec(port, 3, 0), 1, "abc").unwrap();
        leader.start(&start).unwrap();
        let group = leader.into_all_reduce(3);
        assert_eq!((group.rank(), group.world_size()), (0, 3));
        let mine = Tensor::new(&[10f32, 0.5], &Device::Cpu).unwrap();
        let sum = group.all_reduce_sum(vec![mine]).unwrap()[0]
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(sum, vec![13.0, 1.5]);
        for f in followers {
            assert_eq!(f.join().unwrap(), vec![13.0, 1.5]);
        }
    }

    /// A node with another recipe is refused with a reason; node 0 then gives up waiting.
    #[test]
    fn a_node_with_another_recipe_is_refused() {
        let port = free_port();
        let follower = std::thread::spawn(move || {
            Rendezvous::join(&spec(port, 2, 1), 1, "other")
                .err()
                .unwrap()
                .to_string()
        });
        let mut leader_spec = spec(port, 2, 0);
        leader_spec.join_timeout = Duration::from_secs(3);
        let err = Rendezvous::join(&leader_spec, 1, "abc")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("did not join"), "{err}");
        let refused = follower.join().unwrap();
        assert!(refused.contains("different recipe"), "{refused}");
    }

    #[test]
    fn bad_node_specs_name_the_flag() {
        let err = spec(1, 2, 2).validate().unwrap_err().to_string();
        assert!(err.contains("--node-rank"), "{err}");
        let err = spec(1, 1, 0).validate().unwrap_err().to_string();
        assert!(err.contains("--nnodes"), "{err}");
    }
}
