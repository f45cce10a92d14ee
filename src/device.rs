//! Devices and float types as typed values: parsed once from a recipe or a flag
//! (`cpu`, `cuda:1`, `metal`, `auto`, a comma-separated list; `f32`, `f16`, `bf16`),
//! opened when a job starts.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Serde through the text form (`FromStr` and `Display`): recipes hold these values as
/// the strings users type.
macro_rules! text_serde {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = Error;

            fn try_from(text: String) -> Result<Self> {
                text.parse()
            }
        }

        impl From<$t> for String {
            fn from(value: $t) -> String {
                value.to_string()
            }
        }
    };
}

/// One device as a user names it; the CPU unless a recipe or a flag says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
    Metal(usize),
    /// The best one compiled in and present: CUDA 0, then Metal 0, then the CPU.
    Auto,
}

impl FromStr for DeviceSpec {
    type Err = Error;

    /// `cpu`, `cuda`, `cuda:N`, `metal`, `metal:N` or `auto`.
    fn from_str(text: &str) -> Result<Self> {
        let spec = text.trim().to_ascii_lowercase();
        let (kind, index) = match spec.split_once(':') {
            Some((kind, i)) => {
                let index = i.parse::<usize>().map_err(|_| {
                    Error::invalid("--device", text, "expected an index after `:` (cuda:0)")
                })?;
                (kind, Some(index))
            }
            None => (spec.as_str(), None),
        };
        match (kind, index) {
            ("cpu", None) => Ok(DeviceSpec::Cpu),
            ("auto", None) => Ok(DeviceSpec::Auto),
            ("cuda", i) => Ok(DeviceSpec::Cuda(i.unwrap_or(0))),
            ("metal", i) => Ok(DeviceSpec::Metal(i.unwrap_or(0))),
            _ => Err(Error::invalid(
                "--device",
                text,
                "expected cpu, cuda[:N], metal[:N] or auto",
            )),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceSpec::Metal(i) => write!(f, "metal:{i}"),
            DeviceSpec::Auto => f.write_str("auto"),
        }
    }
}

impl DeviceSpec {
    /// The device, or an error saying which build feature it needs.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(i) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(self.not_built("rebuild with `--features cuda`"));
                }
                Ok(Device::new_cuda(i)?)
            }
            DeviceSpec::Metal(i) => {
                if !candle_core::utils::metal_is_available() {
                    return Err(self.not_built("rebuild with `--features metal` on macOS"));
                }
                Ok(Device::new_metal(i)?)
            }
            DeviceSpec::Auto => Ok(open_best()),
        }
    }

    fn not_built(self, hint: &str) -> Error {
        let kind = if matches!(self, DeviceSpec::Cuda(_)) {
            "CUDA"
        } else {
            "Metal"
        };
        Error::invalid(
            "--device",
            self.to_string(),
            format!("this build has no {kind} support; {hint}"),
        )
    }
}

fn open_best() -> Device {
    if candle_core::utils::cuda_is_available() {
        if let Ok(d) = Device::new_cuda(0) {
            return d;
        }
    }
    if candle_core::utils::metal_is_available() {
        if let Ok(d) = Device::new_metal(0) {
            return d;
        }
    }
    Device::Cpu
}

/// The devices of a job: one data-parallel replica on each. A single device is a
/// list of one. In recipes and flags: `cpu` or `cuda:0,cuda:1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceList(Vec<DeviceSpec>);

impl Default for DeviceList {
    fn default() -> Self {
        DeviceList(vec![DeviceSpec::default()])
    }
}

impl FromStr for DeviceList {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(Error::invalid(
                "--device",
                text,
                "expected one device or a comma-separated list (cuda:0,cuda:1)",
            ));
        }
        let specs = parts
            .into_iter()
            .map(DeviceSpec::from_str)
            .collect::<Result<Vec<_>>>()?;
        let mut seen = std::collections::HashSet::new();
        for spec in &specs {
            if *spec != DeviceSpec::Cpu && !seen.insert(*spec) {
                return Err(Error::invalid(
                    "--device",
                    text,
                    format!("`{spec}` is listed twice; each GPU holds one replica"),
                ));
            }
        }
        Ok(DeviceList(specs))
    }
}

text_serde!(DeviceList);

impl fmt::Display for DeviceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&names.join(","))
    }
}

impl DeviceList {
    pub fn specs(&self) -> &[DeviceSpec] {
        &self.0
    }

    /// Opens every device of the list.
    pub fn open(&self) -> Result<Vec<Device>> {
        self.0.iter().map(|d| d.open()).collect()
    }

    /// The one device of a command that runs on one (`eval`, `augment`, `bench`):
    /// every command reads `--device` alike, and these refuse a list.
    pub fn one(&self, command: &str) -> Result<DeviceSpec> {
        match self.0.as_slice() {
            [one] => Ok(*one),
            _ => Err(Error::invalid(
                "--device",
                self.to_string(),
                format!("`{command}` runs on one device: cpu, cuda[:N], metal[:N] or auto"),
            )),
        }
    }
}

/// A float type for weights or inference: `f32`, `f16` or `bf16` (also `float32`,
/// `float16`, `half`, `bfloat16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum FloatType {
    #[default]
    F32,
    F16,
    Bf16,
}

impl FromStr for FloatType {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(FloatType::F32),
            "f16" | "float16" | "half" => Ok(FloatType::F16),
            "bf16" | "bfloat16" => Ok(FloatType::Bf16),
            _ => Err(Error::invalid("--dtype", text, "expected f32, f16 or bf16")),
        }
    }
}

text_serde!(FloatType);

impl fmt::Display for FloatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FloatType::F32 => "f32",
            FloatType::F16 => "f16",
            FloatType::Bf16 => "bf16",
        })
    }
}

impl FloatType {
    pub fn dtype(self) -> DType {
        match self {
            FloatType::F32 => DType::F32,
            FloatType::F16 => DType::F16,
            FloatType::Bf16 => DType::BF16,
        }
    }
}

pub fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_float_types() {
        assert!("cpu"
            .parse::<DeviceSpec>()
            .unwrap()
            .open()
            .unwrap()
            .is_cpu());
        assert!(DeviceSpec::Auto.open().is_ok());
        assert_eq!(
            " CUDA:1 ".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Cuda(1)
        );
        assert_eq!("metal".parse::<DeviceSpec>().unwrap(), DeviceSpec::Metal(0));
        let err = "tpu".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(err.contains("tpu") && err.contains("cuda[:N]"), "{err}");
        let err = "cpu:1".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(err.contains("cpu:1"), "{err}");
        if !candle_core::utils::cuda_is_available() {
            let err = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
        let list: DeviceList = "cpu, cpu".parse().unwrap();
        assert_eq!(list.open().unwrap().len(), 2);
        assert_eq!(list.to_string(), "cpu,cpu");
        let err = "cpu,".parse::<DeviceList>().unwrap_err().to_string();
        assert!(err.contains("comma-separated"), "{err}");
        let err = "cuda:0,cuda".parse::<DeviceList>().unwrap_err().to_string();
        assert!(err.contains("twice"), "{err}");
        // Commands of one device take a list of one, and name themselves otherwise.
        let one: DeviceList = "metal:1".parse().unwrap();
        assert_eq!(one.one("eval").unwrap(), DeviceSpec::Metal(1));
        let err = list.one("eval").unwrap_err().to_string();
        assert!(
            err.contains("cpu,cpu") && err.contains("`eval` runs on one device"),
            "{err}"
        );
        assert_eq!(
            "bfloat16".parse::<FloatType>().unwrap().dtype(),
            DType::BF16
        );
        let err = "int8".parse::<FloatType>().unwrap_err().to_string();
        assert!(
            err.contains("int8") && err.contains("f32, f16 or bf16"),
            "{err}"
        );
    }

    #[test]
    fn recipes_hold_them_as_strings() {
        #[derive(Serialize, Deserialize)]
        struct Holder {
            device: DeviceList,
            dtype: FloatType,
        }
        let h: Holder = toml::from_str("device = \"cuda:0, cuda:1\"\ndtype = \"half\"").unwrap();
        assert_eq!(h.device.specs(), [DeviceSpec::Cuda(0), DeviceSpec::Cuda(1)]);
        assert_eq!(h.dtype, FloatType::F16);
        let text = toml::to_string(&h).unwrap();
        assert!(text.contains("device = \"cuda:0,cuda:1\"") && text.contains("dtype = \"f16\""));
        let err = toml::from_str::<Holder>("device = \"gpu\"\ndtype = \"f32\"")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("gpu") && err.contains("cuda[:N]"), "{err}");
    }
}
