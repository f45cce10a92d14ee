//! Writes state dicts as `pytorch_model.bin`, in PyTorch's zip format (torch >= 1.6) or its
//! legacy format, so that tests can load `.bin` checkpoints without Python.
//!
//! Checked once against torch 2.15: files of both formats holding f32 (3, 4), f16, bf16 and
//! i64 (1, 5) tensors written here load with `torch.load(f, weights_only=True)` (and `False`;
//! zip also with `mmap=True`) to an OrderedDict whose every tensor `torch.equal`s the original:
//!     /work/pyenv/bin/python -c 'import torch; print(torch.load("zip.bin", weights_only=True))'
//!
//! The pickle is protocol 2, as `torch.save` writes it:
//! `OrderedDict([(name, torch._utils._rebuild_tensor_v2(persistent_load(('storage',
//! torch.FloatStorage, key, 'cpu', numel)), offset, size, stride, False, OrderedDict())), ...])`.

use std::io::{Cursor, Write};
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// Which `torch.save` container to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PthFormat {
    /// `torch.save(sd, f)` since torch 1.6: a zip of `data.pkl`, `data/<key>`, `version`.
    Zip,
    /// `torch.save(sd, f, _use_new_zipfile_serialization=False)`: pickles, then storages.
    Legacy,
}

/// Writes `tensors` (in this order, each in its own dtype) to `path` atomically.
pub fn write_pytorch_bin(
    path: &Path,
    tensors: &[(String, Tensor)],
    format: PthFormat,
) -> Result<()> {
    let storages = tensors
        .iter()
        .map(|(name, t)| storage_bytes(name, t))
        .collect::<Result<Vec<_>>>()?;
    let keys: Vec<String> = (0..tensors.len()).map(|i| i.to_string()).collect();
    let state_dict = state_dict_pickle(tensors, &keys, format)?;
    let bytes = match format {
        PthFormat::Zip => zip_container(&state_dict, &keys, &storages)?,
        PthFormat::Legacy => legacy_container(&state_dict, &keys, tensors, &storages),
    };
    crate::io::write_atomic(path, &bytes)
}

fn storage_class(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "FloatStorage",
        DType::F64 => "DoubleStorage",
        DType::F16 => "HalfStorage",
        DType::BF16 => "BFloat16Storage",
        DType::I64 => "LongStorage",
        DType::U8 => "ByteStorage",
        other => return Err(Error::msg(format!("no PyTorch storage type for {other:?}"))),
    })
}

/// The tensor's elements, row-major, little-endian.
fn storage_bytes(name: &str, t: &Tensor) -> Result<Vec<u8>> {
    let flat = t.flatten_all()?;
    let bytes = match t.dtype() {
        DType::F32 => le_bytes(flat.to_vec1::<f32>()?, f32::to_le_bytes),
        DType::F64 => le_bytes(flat.to_vec1::<f64>()?, f64::to_le_bytes),
        DType::F16 => le_bytes(flat.to_vec1::<half::f16>()?, half::f16::to_le_bytes),
        DType::BF16 => le_bytes(flat.to_vec1::<half::bf16>()?, half::bf16::to_le_bytes),
        DType::I64 => le_bytes(flat.to_vec1::<i64>()?, i64::to_le_bytes),
        DType::U8 => flat.to_vec1::<u8>()?,
        other => {
            return Err(Error::msg(format!(
                "{name}: no PyTorch storage type for {other:?}"
            )))
        }
    };
    Ok(bytes)
}

fn le_bytes<T: Copy, const N: usize>(values: Vec<T>, f: fn(T) -> [u8; N]) -> Vec<u8> {
    values.into_iter().flat_map(f).collect()
}

/// A minimal protocol-2 pickle writer: just the opcodes a state dict needs.
struct Pickle(Vec<u8>);

impl Pickle {
    fn new() -> Self {
        Pickle(vec![0x80, 2])
    }
    fn op(&mut self, op: u8) {
        self.0.push(op)
    }
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn unicode(&mut self, s: &str) {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: usize) {
        match i32::try_from(v) {
            Ok(v) => {
                self.0.push(b'J');
                self.0.extend_from_slice(&v.to_le_bytes());
            }
            Err(_) => {
                // LONG1 with 8 little-endian bytes.
                self.0.extend_from_slice(&[0x8a, 8]);
                self.0.extend_from_slice(&(v as u64).to_le_bytes());
            }
        }
    }
    fn int_tuple(&mut self, values: &[usize]) {
        self.op(b'(');
        values.iter().for_each(|&v| self.int(v));
        self.op(b't');
    }
    /// `collections.OrderedDict()`
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(b')');
        self.op(b'R');
    }
    fn finish(mut self) -> Vec<u8> {
        self.op(b'.');
        self.0
    }
}

fn state_dict_pickle(
    tensors: &[(String, Tensor)],
    keys: &[String],
    format: PthFormat,
) -> Result<Vec<u8>> {
    let mut p = Pickle::new();
    p.empty_ordered_dict();
    p.op(b'(');
    for ((name, t), key) in tensors.iter().zip(keys) {
        p.unicode(name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.op(b'(');
        // The storage, through a persistent id.
        p.op(b'(');
        p.unicode("storage");
        p.global("torch", storage_class(t.dtype())?);
        p.unicode(key);
        p.unicode("cpu");
        p.int(t.elem_count());
        if format == PthFormat::Legacy {
            p.op(b'N'); // view metadata
        }
        p.op(b't');
        p.op(b'Q');
        p.int(0); // storage offset
        let dims = t.dims();
        p.int_tuple(dims);
        let strides: Vec<usize> = (0..dims.len())
            .map(|i| dims[i + 1..].iter().product())
            .collect();
        p.int_tuple(&strides);
        p.op(0x89); // requires_grad = False
        p.empty_ordered_dict(); // backward hooks
        p.op(b't');
        p.op(b'R');
    }
    p.op(b'u');
    Ok(p.finish())
}

fn zip_container(state_dict: &[u8], keys: &[String], storages: &[Vec<u8>]) -> Result<Vec<u8>> {
    use zip::write::SimpleFileOptions;
    let zip_err = |e: zip::result::ZipError| Error::msg(format!("writing the zip archive: {e}"));
    let io_err = |e: std::io::Error| Error::msg(format!("writing the zip archive: {e}"));
    // Stored and 64-byte aligned, as torch writes records (so they can be memory-mapped).
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(storages.iter().map(Vec::len).sum::<usize>() > u32::MAX as usize / 2)
        .with_alignment(64);
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let mut entry = |name: &str, bytes: &[u8]| -> Result<()> {
        zip.start_file(format!("archive/{name}"), options)
            .map_err(zip_err)?;
        zip.write_all(bytes).map_err(io_err)
    };
    entry("data.pkl", state_dict)?;
    entry("byteorder", b"little")?;
    for (key, bytes) in keys.iter().zip(storages) {
        entry(&format!("data/{key}"), bytes)?;
    }
    entry("version", b"3\n")?;
    Ok(zip.finish().map_err(zip_err)?.into_inner())
}

fn legacy_container(
    state_dict: &[u8],
    keys: &[String],
    tensors: &[(String, Tensor)],
    storages: &[Vec<u8>],
) -> Vec<u8> {
    let mut out = Vec::new();
    // Magic number 0x1950a86a20f9469cfc6c as LONG1.
    out.extend_from_slice(&[0x80, 2, 0x8a, 10]);
    out.extend_from_slice(&0x1950a86a20f9469cfc6c_u128.to_le_bytes()[..10]);
    out.push(b'.');
    // Protocol version 1001.
    out.extend_from_slice(&[0x80, 2, b'M']);
    out.extend_from_slice(&1001u16.to_le_bytes());
    out.push(b'.');
    let mut sys = Pickle::new();
    sys.op(b'}');
    sys.op(b'(');
    sys.unicode("protocol_version");
    sys.int(1001);
    sys.unicode("little_endian");
    sys.op(0x88);
    sys.unicode("type_sizes");
    sys.op(b'}');
    sys.op(b'(');
    for (name, size) in [("short", 2), ("int", 4), ("long", 4)] {
        sys.unicode(name);
        sys.int(size);
    }
    sys.op(b'u');
    sys.op(b'u');
    out.extend_from_slice(&sys.finish());
    out.extend_from_slice(state_dict);
    let mut list = Pickle::new();
    list.op(b']');
    list.op(b'(');
    keys.iter().for_each(|k| list.unicode(k));
    list.op(b'e');
    out.extend_from_slice(&list.finish());
    for ((_, t), bytes) in tensors.iter().zip(storages) {
        out.extend_from_slice(&(t.elem_count() as i64).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    fn sample() -> Vec<(String, Tensor)> {
        let dev = Device::Cpu;
        vec![
            (
                "bert.embeddings.word_embeddings.weight".into(),
                Tensor::arange(0f32, 12., &dev)
                    .unwrap()
                    .reshape((3, 4))
                    .unwrap(),
            ),
            (
                "bert.embeddings.LayerNorm.gamma".into(),
                Tensor::new(&[1.5f32, -2.0, 0.25, 8.0], &dev).unwrap(),
            ),
            (
                "half".into(),
                Tensor::new(&[1.0f32, 2.5], &dev)
                    .unwrap()
                    .to_dtype(DType::F16)
                    .unwrap(),
            ),
            (
                "bert.embeddings.position_ids".into(),
                Tensor::arange(0i64, 5, &dev).unwrap().unsqueeze(0).unwrap(),
            ),
        ]
    }

    fn assert_same(read: Vec<(String, Tensor)>, written: &[(String, Tensor)]) {
        let read: HashMap<_, _> = read.into_iter().collect();
        assert_eq!(read.len(), written.len());
        for (name, t) in written {
            let r = &read[name];
            assert_eq!(r.dims(), t.dims(), "{name}");
            assert_eq!(r.dtype(), t.dtype(), "{name}");
            let a: Vec<f64> = r
                .flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap();
            let b: Vec<f64> = t
                .flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(a, b, "{name}");
        }
    }

    #[test]
    fn zip_format_reads_back_through_candle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pytorch_model.bin");
        let tensors = sample();
        write_pytorch_bin(&path, &tensors, PthFormat::Zip).unwrap();
        assert!(!crate::model::torch_legacy::is_legacy(&path).unwrap());
        assert_same(candle_core::pickle::read_all(&path).unwrap(), &tensors);
    }

    #[test]
    fn legacy_format_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pytorch_model.bin");
        let tensors = sample();
        write_pytorch_bin(&path, &tensors, PthFormat::Legacy).unwrap();
        assert!(crate::model::torch_legacy::is_legacy(&path).unwrap());
        assert_same(
            crate::model::torch_legacy::read_legacy(&path).unwrap(),
            &tensors,
        );
    }
}
