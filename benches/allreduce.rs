//! The c10d shim's all-reduce against a plain copy of the same buffer: 2 ranks (threads of this
//! process, each its own Gloo process group) meet on loopback and sum f32 buffers of several
//! sizes; a memory copy of each buffer is the reference. Run by scripts/bench-ddp; prints a
//! Markdown table. `cargo bench --bench allreduce -- MB...` picks the sizes.

use std::time::{Duration, Instant};

use sweep::dist::{Backend, Rendezvous, World};
use tch::{Device, Kind, Tensor};

const RANKS: usize = 2;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn reps(mb: usize) -> usize {
    (256 / mb.max(1)).clamp(5, 50)
}

fn main() {
    if !World::available() {
        eprintln!("allreduce: this binary has no c10d shim (install libgloo-dev and rebuild)");
        std::process::exit(1);
    }
    tch::set_num_threads(1);
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1, 16, 64]
    } else {
        sizes
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let ranks: Vec<_> = (0..RANKS)
        .map(|rank| {
            let sizes = sizes.clone();
            std::thread::spawn(move || {
                let w = World::connect(
                    &Rendezvous::local(rank, RANKS, port, Duration::from_secs(60)),
                    Backend::Gloo,
                    Device::Cpu,
                )
                .expect("the ranks meet");
                sizes
                    .iter()
                    .map(|&mb| {
                        let n = (mb << 20) / 4;
                        let mut t = Tensor::ones([n as i64], (Kind::Float, Device::Cpu));
                        let mut times = Vec::new();
                        for i in 0..reps(mb) + 2 {
                            w.barrier().unwrap();
                            let t0 = Instant::now();
                            w.all_reduce_sum(&mut t).unwrap();
                            if i >= 2 {
                                times.push(t0.elapsed().as_secs_f64());
                            }
                        }
                        median(times)
                    })
                    .collect::<Vec<f64>>()
            })
        })
        .collect();
    let times: Vec<Vec<f64>> = ranks.into_iter().map(|h| h.join().unwrap()).collect();
    println!("allreduce: {RANKS} ranks (threads), Gloo on loopback, f32 sum in place, 1 intra-op thread; median of several repetitions");
    println!("| MB | all-reduce ms | algbw GB/s | busbw GB/s | memcpy ms | memcpy GB/s | all-reduce / memcpy |");
    println!("|---|---|---|---|---|---|---|");
    for (i, &mb) in sizes.iter().enumerate() {
        let ar = times.iter().map(|t| t[i]).fold(0.0, f64::max);
        let n = (mb << 20) / 4;
        let src = Tensor::ones([n as i64], (Kind::Float, Device::Cpu));
        let mut dst = Tensor::zeros([n as i64], (Kind::Float, Device::Cpu));
        let copies: Vec<f64> = (0..reps(mb) + 2)
            .map(|_| {
                let t0 = Instant::now();
                dst.copy_(&src);
                t0.elapsed().as_secs_f64()
            })
            .skip(2)
            .collect();
        let copy = median(copies);
        let bytes = (mb << 20) as f64;
        // busbw: what each rank sends and receives in a ring all-reduce, 2(n-1)/n of the buffer.
        let bus = bytes * 2.0 * (RANKS as f64 - 1.0) / RANKS as f64;
        println!(
            "| {mb} | {:.2} | {:.2} | {:.2} | {:.3} | {:.2} | {:.1}x |",
            ar * 1e3,
            bytes / ar / 1e9,
            bus / ar / 1e9,
            copy * 1e3,
            bytes / copy / 1e9,
            ar / copy
        );
    }
}
