//! BERT, written for distillation: every hidden state, every layer's pre-softmax
//! attention scores, the pooler and the task heads, with gradients through all of it.
//! The other encoder families run here too, with the differences `model::family`
//! lists (positions, token types, ELECTRA's embedding projection, MPNet's relative
//! position bias, the classification heads).
//!
//! Tensor names are the canonical ones of Hugging Face's `BertForSequenceClassification`
//! / `BertForMaskedLM`; `model::family` maps each family's checkpoint names to them.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use super::config::{Activation, BertConfig};
use super::family::{relative_position_bucket, Family, HeadActivation, HeadKind};
use super::ops;
use crate::rng::Rng;

/// Additive mask on padded keys. The TinyBERT reference uses -10000: finite in
/// f16/bf16 (unlike `f32::MIN`), and the attention loss zeroes entries below -100.
pub const MASK_VALUE: f64 = -10000.0;

const INIT_STD: f64 = 0.02;

/// MPNet's relative-position buckets as transformers computes them.
const MPNET_BUCKETS: usize = 32;

/// One batch of token ids. All tensors are (batch, seq) and `u32`.
#[derive(Debug, Clone)]
pub struct BertInput {
    pub input_ids: Tensor,
    pub token_type_ids: Tensor,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor,
}

/// What a forward pass should keep besides the last hidden state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outputs {
    /// Embedding output and each layer's output.
    pub hidden_states: bool,
    /// Each layer's QK^T/sqrt(d) + mask, shape (batch, heads, seq, seq).
    pub attention_scores: bool,
}

impl Outputs {
    pub const ALL: Outputs = Outputs {
        hidden_states: true,
        attention_scores: true,
    };
}

/// Dropout is active only when a generator is given (training mode).
pub type Train<'a> = Option<&'a mut Rng>;

#[derive(Debug, Clone)]
pub struct BertOutput {
    /// (batch, seq, hidden); (batch, 1, hidden), the first token's, from a classifier's
    /// forward pass that wants no other outputs (`BertModel::first_token_state`).
    pub last_hidden_state: Tensor,
    /// num_layers + 1 tensors when requested; index 0 is the embedding output.
    pub hidden_states: Vec<Tensor>,
    /// num_layers tensors when requested.
    pub attention_scores: Vec<Tensor>,
}

fn dropout(x: &Tensor, p: f32, train: &mut Train) -> Result<Tensor> {
    match train {
        Some(rng) => ops::dropout(x, p, rng),
        None => Ok(x.clone()),
    }
}

/// A dense layer `x W^T + b` whose weights come from (or are created in) a VarBuilder.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let weight = vb.get_with_hints(
            (out_dim, in_dim),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: INIT_STD,
            },
        )?;
        let bias = vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
        Ok(Linear {
            weight,
            bias: Some(bias),
        })
    }

    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::linear(x, &self.weight, self.bias.as_ref())
    }
}

#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::Gelu => ops::gelu_erf(x),
        Activation::GeluTanh => x.gelu(),
        Activation::Relu => x.relu(),
    }
}

/// DistilBERT's fixed position table (`sinusoidal_pos_embds`), as transformers'
/// `create_sinusoidal_embeddings` computes it: angle `pos / 10000^(2 * (j / 2) / width)`,
/// its sine in even columns and its cosine in odd ones, in f64 and then rounded to f32.
pub fn sinusoidal_positions(positions: usize, width: usize) -> Result<Tensor> {
    let mut table = Vec::with_capacity(positions * width);
    for pos in 0..positions {
        for j in 0..width {
            let angle = pos as f64 / 10000f64.powf((2 * (j / 2)) as f64 / width as f64);
            let value = if j % 2 == 0 { angle.sin() } else { angle.cos() };
            table.push(value as f32);
        }
    }
    Tensor::from_vec(table, (positions, width), &candle_core::Device::Cpu)
}

fn embedding(vb: VarBuilder, rows: usize, dim: usize) -> Result<Tensor> {
    vb.get_with_hints(
        (rows, dim),
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        },
    )
}

/// Word, position and (where the family has them) token-type embeddings, summed and
/// normalised.
#[derive(Debug, Clone)]
pub struct BertEmbeddings {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    /// None for DistilBERT and MPNet; RoBERTa's has one row, always used.
    token_type_embeddings: Option<Tensor>,
    layer_norm: LayerNorm,
    dropout: f32,
    family: Family,
    /// `BertConfig::position_padding_idx`.
    padding_idx: Option<usize>,
}

impl BertEmbeddings {
    fn new(vb: VarBuilder, c: &BertConfig) -> Result<Self> {
        let width = c.embedding_size();
        let family = c.family();
        // Created in this order: a seeded random model draws its tensors in turn.
        let word_embeddings = embedding(vb.pp("word_embeddings"), c.vocab_size, width)?;
        let mut position_embeddings = embedding(
            vb.pp("position_embeddings"),
            c.max_position_embeddings,
            width,
        )?;
        if c.fixed_positions() {
            // DistilBERT's sinusoidal table: no gradient (the optimizer leaves it out too).
            position_embeddings = position_embeddings.detach();
        }
        let token_type_embeddings = family
            .has_token_type_embeddings()
            .then(|| embedding(vb.pp("token_type_embeddings"), c.type_vocab_size, width))
            .transpose()?;
        Ok(BertEmbeddings {
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            layer_norm: LayerNorm::new(vb.pp("LayerNorm"), width, c.layer_norm_eps)?,
            dropout: c.hidden_dropout_prob,
            family,
            padding_idx: c.position_padding_idx(),
        })
    }

    pub fn word_embeddings(&self) -> &Tensor {
        &self.word_embeddings
    }

    fn forward(&self, input: &BertInput, train: &mut Train) -> Result<Tensor> {
        let (batch, seq) = input.input_ids.dims2()?;
        let width = self.word_embeddings.dim(1)?;
        let words = self
            .word_embeddings
            .index_select(&input.input_ids.flatten_all()?, 0)?
            .reshape((batch, seq, width))?;
        // Words, then token types, then positions: transformers' order of the sums.
        let x = match &self.token_type_embeddings {
            Some(table) if self.family.has_token_types() => {
                let types = table
                    .index_select(&input.token_type_ids.flatten_all()?, 0)?
                    .reshape((batch, seq, width))?;
                (words + types)?
            }
            // RoBERTa's one type: every token is of type 0.
            Some(table) => words.broadcast_add(&table.narrow(0, 0, 1)?.unsqueeze(0)?)?,
            None => words,
        };
        let x = x.broadcast_add(&self.positions(input)?)?;
        let x = self.layer_norm.forward(&x)?;
        dropout(&x, self.dropout, train)
    }

    /// Position embeddings, (1, seq, width) or (batch, seq, width): slots 0, 1, 2, ...,
    /// or for RoBERTa-style families the tokens that are not `padding_idx` counted from
    /// `padding_idx + 1`, and those that are at `padding_idx` (fairseq's scheme; from
    /// the ids, as transformers' `create_position_ids_from_input_ids`, not the mask).
    fn positions(&self, input: &BertInput) -> Result<Tensor> {
        let (batch, seq) = input.input_ids.dims2()?;
        let max_pos = self.position_embeddings.dim(0)?;
        let offset = self.padding_idx.map_or(0, |idx| idx + 1);
        if seq + offset > max_pos {
            candle_core::bail!(
                "sequence length {seq} exceeds the {} positions of max_position_embeddings \
                 {max_pos}; truncate inputs",
                max_pos - offset.min(max_pos)
            );
        }
        let Some(padding_idx) = self.padding_idx else {
            return self.position_embeddings.narrow(0, 0, seq)?.unsqueeze(0);
        };
        let tokens = input.input_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let mut ids = Vec::with_capacity(batch * seq);
        for row in &tokens {
            let mut count = 0;
            for &token in row {
                let real = token as usize != padding_idx;
                count += real as usize;
                ids.push(if real {
                    count + padding_idx
                } else {
                    padding_idx
                } as u32);
            }
        }
        let ids = Tensor::from_vec(ids, batch * seq, self.position_embeddings.device())?;
        self.position_embeddings
            .index_select(&ids, 0)?
            .reshape((batch, seq, ()))
    }
}

/// What every layer adds to its attention scores: the padding mask, (batch, 1, 1,
/// seq), and MPNet's relative position bias, (1, heads, seq, seq).
struct Mask {
    additive: Tensor,
    relative_bias: Option<Tensor>,
}

#[derive(Debug, Clone)]
struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    layer_norm: LayerNorm,
    heads: usize,
    head_dim: usize,
    attention_dropout: f32,
    hidden_dropout: f32,
}

impl SelfAttention {
    fn new(vb: VarBuilder, c: &BertConfig) -> Result<Self> {
        let h = c.hidden_size;
        let sa = vb.pp("self");
        let out = vb.pp("output");
        Ok(SelfAttention {
            query: Linear::new(sa.pp("query"), h, h)?,
            key: Linear::new(sa.pp("key"), h, h)?,
            value: Linear::new(sa.pp("value"), h, h)?,
            output: Linear::new(out.pp("dense"), h, h)?,
            layer_norm: LayerNorm::new(out.pp("LayerNorm"), h, c.layer_norm_eps)?,
            heads: c.num_attention_heads,
            head_dim: c.head_dim(),
            attention_dropout: c.attention_probs_dropout_prob,
            hidden_dropout: if c.family().drops_attention_output() {
                c.hidden_dropout_prob
            } else {
                0.0
            },
        })
    }

    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        x.reshape((b, s, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Returns the attention block's output and its pre-softmax scores.
    fn forward(&self, x: &Tensor, mask: &Mask, train: &mut Train) -> Result<(Tensor, Tensor)> {
        let (scores, context) = self.attend(x, mask, train)?;
        let out = dropout(&self.output.forward(&context)?, self.hidden_dropout, train)?;
        let out = self.layer_norm.forward(&(out + x)?)?;
        Ok((out, scores))
    }

    /// Scores and merged context: two fused ops for f32 on the CPU with a system BLAS
    /// (`attention`), candle ops otherwise.
    fn attend(&self, x: &Tensor, mask: &Mask, train: &mut Train) -> Result<(Tensor, Tensor)> {
        let bias = mask.relative_bias.as_ref();
        #[cfg(system_blas)]
        if super::attention::applies(x) && super::attention::applies(&mask.additive) {
            use super::attention;
            let (b, s, _) = x.dims3()?;
            let (q, k, v) = (
                self.query.forward(x)?,
                self.key.forward(x)?,
                self.value.forward(x)?,
            );
            let scores = attention::scores(&q, &k, &mask.additive.reshape((b, s))?, self.heads)?;
            let scores = match bias {
                Some(bias) => scores.broadcast_add(bias)?,
                None => scores,
            };
            let dropout = train.as_deref_mut().map(|rng| attention::Dropout {
                p: self.attention_dropout,
                seed: rng.next_u64(),
            });
            let context = attention::context(&scores, &v, self.heads, dropout)?;
            return Ok((scores, context));
        }
        self.attend_composed(x, x, &mask.additive, bias, train)
    }

    /// Scores and merged context as candle ops: the queries of `rows` (every token of
    /// `x`, or its first alone) against the keys and values of every token of `x`.
    /// `bias` holds a row for each query.
    fn attend_composed(
        &self,
        x: &Tensor,
        rows: &Tensor,
        additive_mask: &Tensor,
        bias: Option<&Tensor>,
        train: &mut Train,
    ) -> Result<(Tensor, Tensor)> {
        let (b, n, h) = rows.dims3()?;
        // Scaling the queries, not the (seq x seq) scores, saves a pass over the scores.
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let q = self.split_heads(&(self.query.forward(rows)? * scale)?)?;
        let k = self.split_heads(&self.key.forward(x)?)?;
        let v = self.split_heads(&self.value.forward(x)?)?;
        let mut scores = ops::matmul(&q, &k.t()?)?.broadcast_add(additive_mask)?;
        if let Some(bias) = bias {
            scores = scores.broadcast_add(bias)?;
        }
        let mut probs = ops::softmax_last_dim(&scores)?;
        if let Some(rng) = train {
            probs = ops::seeded_dropout(&probs, self.attention_dropout, rng.next_u64())?;
        }
        let context = ops::matmul(&probs, &v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, n, h))?;
        Ok((scores, context))
    }

    /// The block's output at the first token alone, (batch, 1, hidden): keys and values
    /// for every token, the query, output and norm for the first. Dropout draws its
    /// seeds as `forward` does, so the layers after see the same generator state.
    fn forward_first(&self, x: &Tensor, mask: &Mask, train: &mut Train) -> Result<Tensor> {
        let first = x.narrow(1, 0, 1)?.contiguous()?;
        let bias = (mask.relative_bias.as_ref())
            .map(|bias| bias.narrow(2, 0, 1))
            .transpose()?;
        let (_, context) = self.attend_composed(x, &first, &mask.additive, bias.as_ref(), train)?;
        let out = dropout(&self.output.forward(&context)?, self.hidden_dropout, train)?;
        self.layer_norm.forward(&(out + first)?)
    }
}

#[derive(Debug, Clone)]
struct BertLayer {
    attention: SelfAttention,
    intermediate: Linear,
    output: Linear,
    layer_norm: LayerNorm,
    act: Activation,
    dropout: f32,
}

impl BertLayer {
    fn new(vb: VarBuilder, c: &BertConfig, act: Activation) -> Result<Self> {
        Ok(BertLayer {
            attention: SelfAttention::new(vb.pp("attention"), c)?,
            intermediate: Linear::new(
                vb.pp("intermediate").pp("dense"),
                c.hidden_size,
                c.intermediate_size,
            )?,
            output: Linear::new(
                vb.pp("output").pp("dense"),
                c.intermediate_size,
                c.hidden_size,
            )?,
            layer_norm: LayerNorm::new(
                vb.pp("output").pp("LayerNorm"),
                c.hidden_size,
                c.layer_norm_eps,
            )?,
            act,
            dropout: c.hidden_dropout_prob,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Mask, train: &mut Train) -> Result<(Tensor, Tensor)> {
        let (attended, scores) = self.attention.forward(x, mask, train)?;
        let inner = activation(&self.intermediate.forward(&attended)?, self.act)?;
        let out = dropout(&self.output.forward(&inner)?, self.dropout, train)?;
        let out = self.layer_norm.forward(&(out + attended)?)?;
        Ok((out, scores))
    }

    /// The layer's output at the first token alone, (batch, 1, hidden).
    fn forward_first(&self, x: &Tensor, mask: &Mask, train: &mut Train) -> Result<Tensor> {
        let attended = self.attention.forward_first(x, mask, train)?;
        let inner = activation(&self.intermediate.forward(&attended)?, self.act)?;
        let out = dropout(&self.output.forward(&inner)?, self.dropout, train)?;
        self.layer_norm.forward(&(out + attended)?)
    }
}

/// The encoder: embeddings, layers and (optionally) the pooler.
#[derive(Debug, Clone)]
pub struct BertModel {
    embeddings: BertEmbeddings,
    /// ELECTRA's projection from `embedding_size` to `hidden_size`.
    embeddings_project: Option<Linear>,
    /// MPNet's bias table, (buckets, heads), shared by every layer.
    relative_attention_bias: Option<Tensor>,
    layers: Vec<BertLayer>,
    pooler: Option<Linear>,
    config: BertConfig,
}

impl BertModel {
    /// `vb` points at the encoder (`bert.` in a full checkpoint).
    pub fn new(vb: VarBuilder, config: &BertConfig, with_pooler: bool) -> Result<Self> {
        let act = config
            .activation("config.json")
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| BertLayer::new(vb.pp("encoder").pp("layer").pp(i), config, act))
            .collect::<Result<Vec<_>>>()?;
        let (h, e) = (config.hidden_size, config.embedding_size());
        let pooler = with_pooler
            .then(|| Linear::new(vb.pp("pooler").pp("dense"), h, h))
            .transpose()?;
        let embeddings_project = (e != h)
            .then(|| Linear::new(vb.pp("embeddings_project"), e, h))
            .transpose()?;
        let relative_attention_bias = config
            .family()
            .has_relative_attention_bias()
            .then(|| {
                embedding(
                    vb.pp("encoder").pp("relative_attention_bias"),
                    config.relative_attention_num_buckets(),
                    config.num_attention_heads,
                )
            })
            .transpose()?;
        Ok(BertModel {
            embeddings: BertEmbeddings::new(vb.pp("embeddings"), config)?,
            embeddings_project,
            relative_attention_bias,
            layers,
            pooler,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    pub fn embeddings(&self) -> &BertEmbeddings {
        &self.embeddings
    }

    /// (batch, seq) 0/1 mask -> (batch, 1, 1, seq) additive mask in `dtype`.
    pub fn additive_mask(attention_mask: &Tensor, dtype: DType) -> Result<Tensor> {
        let (b, s) = attention_mask.dims2()?;
        let keep = attention_mask.to_dtype(DType::F32)?;
        ((1.0 - keep)? * MASK_VALUE)?
            .to_dtype(dtype)?
            .reshape((b, 1, 1, s))
    }

    pub fn forward(
        &self,
        input: &BertInput,
        want: Outputs,
        mut train: Train,
    ) -> Result<BertOutput> {
        let (mut x, mask) = self.embed(input, &mut train)?;
        let mut hidden_states = Vec::new();
        let mut attention_scores = Vec::new();
        if want.hidden_states {
            hidden_states.push(x.clone());
        }
        for layer in &self.layers {
            let (out, scores) = layer.forward(&x, &mask, &mut train)?;
            x = out;
            if want.hidden_states {
                hidden_states.push(x.clone());
            }
            if want.attention_scores {
                attention_scores.push(scores);
            }
        }
        Ok(BertOutput {
            last_hidden_state: x,
            hidden_states,
            attention_scores,
        })
    }

    /// The embedding output (projected to the hidden width) and the layers' mask.
    fn embed(&self, input: &BertInput, train: &mut Train) -> Result<(Tensor, Mask)> {
        let device = input.input_ids.device();
        if let (Some(rng), false) = (train.as_deref_mut(), device.is_cpu()) {
            // GPU dropout masks come from the device's generator (`ops::dropout`):
            // seeded here, once a pass, from the run's generator.
            device.set_seed(rng.next_u64())?;
        }
        let mut x = self.embeddings.forward(input, train)?;
        if let Some(project) = &self.embeddings_project {
            x = project.forward(&x)?;
        }
        let mask = Mask {
            additive: Self::additive_mask(&input.attention_mask, x.dtype())?,
            relative_bias: self.relative_bias(x.dim(1)?)?,
        };
        Ok((x, mask))
    }

    /// The last layer's output at the first token, (batch, 1, hidden): all a
    /// classification head reads. The last layer computes keys and values for every
    /// token, and its query, feed-forward and norms for the first token alone, which
    /// leaves out about a fifth of a 4-layer student's work (README, Benchmarks).
    /// Without dropout, equal to `forward`'s last hidden state at token 0 within float
    /// rounding; with dropout, the last layer's masks are drawn for these shapes.
    pub fn first_token_state(&self, input: &BertInput, mut train: Train) -> Result<Tensor> {
        let (mut x, mask) = self.embed(input, &mut train)?;
        let Some((last, layers)) = self.layers.split_last() else {
            return x.narrow(1, 0, 1);
        };
        for layer in layers {
            x = layer.forward(&x, &mask, &mut train)?.0;
        }
        last.forward_first(&x, &mask, &mut train)
    }

    /// MPNet's relative position bias for `seq` tokens, (1, heads, seq, seq): the
    /// table's row for each (query, key) offset's bucket. As in transformers, offsets
    /// count slots, padding included.
    fn relative_bias(&self, seq: usize) -> Result<Option<Tensor>> {
        let Some(table) = &self.relative_attention_bias else {
            return Ok(None);
        };
        let (buckets, heads) = table.dims2()?;
        let index: Vec<u32> = (0..seq as i64)
            .flat_map(|q| (0..seq as i64).map(move |k| (q, k)))
            // transformers buckets with 32 whatever relative_attention_num_buckets says.
            .map(|(q, k)| {
                relative_position_bucket(k - q, MPNET_BUCKETS, 128).min(buckets - 1) as u32
            })
            .collect();
        let index = Tensor::from_vec(index, seq * seq, table.device())?;
        let bias = table
            .index_select(&index, 0)?
            .reshape((seq, seq, heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .contiguous()?;
        Ok(Some(bias))
    }

    /// tanh(W h_[CLS] + b). Errors when the model was built without a pooler.
    pub fn pool(&self, last_hidden_state: &Tensor) -> Result<Tensor> {
        let pooler = self
            .pooler
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("this model has no pooler".into()))?;
        let cls = last_hidden_state.narrow(1, 0, 1)?.squeeze(1)?;
        pooler.forward(&cls)?.tanh()
    }
}

/// Output of a classification forward pass.
#[derive(Debug, Clone)]
pub struct ClassifierOutput {
    pub logits: Tensor,
    pub pooled: Tensor,
    pub encoder: BertOutput,
}

/// A sequence classifier of any family: BERT's pooler, dropout and linear layer, or
/// the other families' two-layer head on the first token. One output = regression.
#[derive(Debug, Clone)]
pub struct BertForSequenceClassification {
    pub bert: BertModel,
    head: ClassifierHead,
    dropout: f32,
}

#[derive(Debug, Clone)]
enum ClassifierHead {
    /// BERT: `classifier` on the pooler's output.
    Pooled { classifier: Linear },
    /// `classifier.dense`, the activation, `classifier.out_proj`; dropout before each
    /// layer (DistilBERT: only before the second).
    Dense {
        dense: Linear,
        out_proj: Linear,
        act: HeadActivation,
        dropout_first: bool,
    },
}

impl BertForSequenceClassification {
    /// `vb` is the checkpoint root (holding `bert.*` and `classifier.*`), with
    /// canonical names (`model::family`).
    pub fn new(vb: VarBuilder, config: &BertConfig) -> Result<Self> {
        let (h, labels) = (config.hidden_size, config.num_labels());
        let family = config.family();
        // The encoder first: a seeded random model draws its tensors in turn.
        let bert = BertModel::new(vb.pp("bert"), config, family.head() == HeadKind::Pooler)?;
        let head = match family.head() {
            HeadKind::Pooler => ClassifierHead::Pooled {
                classifier: Linear::new(vb.pp("classifier"), h, labels)?,
            },
            HeadKind::Dense(act) => ClassifierHead::Dense {
                dense: Linear::new(vb.pp("classifier").pp("dense"), h, h)?,
                out_proj: Linear::new(vb.pp("classifier").pp("out_proj"), h, labels)?,
                act,
                dropout_first: family != Family::DistilBert,
            },
        };
        Ok(BertForSequenceClassification {
            bert,
            head,
            dropout: config.classifier_dropout(),
        })
    }

    pub fn config(&self) -> &BertConfig {
        self.bert.config()
    }

    pub fn forward(
        &self,
        input: &BertInput,
        want: Outputs,
        mut train: Train,
    ) -> Result<ClassifierOutput> {
        // With nothing but the logits wanted, the last layer runs for the first token.
        let encoder = if want == Outputs::default() {
            BertOutput {
                last_hidden_state: self.bert.first_token_state(input, train.as_deref_mut())?,
                hidden_states: Vec::new(),
                attention_scores: Vec::new(),
            }
        } else {
            self.bert.forward(input, want, train.as_deref_mut())?
        };
        let (pooled, logits) = self.head(&encoder.last_hidden_state, &mut train)?;
        Ok(ClassifierOutput {
            logits,
            pooled,
            encoder,
        })
    }

    /// The head's hidden representation ("pooled": the input of its last layer) and
    /// the logits.
    fn head(&self, last_hidden_state: &Tensor, train: &mut Train) -> Result<(Tensor, Tensor)> {
        match &self.head {
            ClassifierHead::Pooled { classifier } => {
                let pooled = self.bert.pool(last_hidden_state)?;
                let logits = classifier.forward(&dropout(&pooled, self.dropout, train)?)?;
                Ok((pooled, logits))
            }
            ClassifierHead::Dense {
                dense,
                out_proj,
                act,
                dropout_first,
            } => {
                let mut x = last_hidden_state.narrow(1, 0, 1)?.squeeze(1)?;
                if *dropout_first {
                    x = dropout(&x, self.dropout, train)?;
                }
                let x = dense.forward(&x)?;
                let pooled = match act {
                    HeadActivation::Tanh => x.tanh()?,
                    HeadActivation::Gelu => ops::gelu_erf(&x)?,
                    HeadActivation::Relu => x.relu()?,
                };
                let logits = out_proj.forward(&dropout(&pooled, self.dropout, train)?)?;
                Ok((pooled, logits))
            }
        }
    }

    /// Logits only, no intermediate outputs kept, no dropout; the last layer runs for
    /// the first token alone (`BertModel::first_token_state`).
    pub fn logits(&self, input: &BertInput) -> Result<Tensor> {
        Ok(self.forward(input, Outputs::default(), None)?.logits)
    }
}

/// `BertForMaskedLM`: transform (dense, activation, LayerNorm) and a decoder tied to the
/// word embeddings when the checkpoint has no `cls.predictions.decoder.weight`.
#[derive(Debug, Clone)]
pub struct BertForMaskedLM {
    pub bert: BertModel,
    transform: Linear,
    transform_norm: LayerNorm,
    decoder: Linear,
    act: Activation,
}

impl BertForMaskedLM {
    pub fn new(vb: VarBuilder, config: &BertConfig) -> Result<Self> {
        if config.family() != Family::Bert {
            candle_core::bail!(
                "masked-token augmentation needs a BERT masked LM; this checkpoint's \
                 model_type is `{}`",
                config.family().model_type()
            );
        }
        let bert = BertModel::new(vb.pp("bert"), config, false)?;
        let act = config
            .activation("config.json")
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let head = vb.pp("cls").pp("predictions");
        let transform = Linear::new(
            head.pp("transform").pp("dense"),
            config.hidden_size,
            config.hidden_size,
        )?;
        let transform_norm = LayerNorm::new(
            head.pp("transform").pp("LayerNorm"),
            config.hidden_size,
            config.layer_norm_eps,
        )?;
        let bias = head.get_with_hints(config.vocab_size, "bias", Init::Const(0.0))?;
        let decoder_weight = if head.contains_tensor("decoder.weight") {
            head.pp("decoder")
                .get((config.vocab_size, config.hidden_size), "weight")?
        } else {
            bert.embeddings().word_embeddings().clone()
        };
        Ok(BertForMaskedLM {
            bert,
            transform,
            transform_norm,
            decoder: Linear::from_weights(decoder_weight, Some(bias)),
            act,
        })
    }

    /// Vocabulary logits for every position: (batch, seq, vocab).
    pub fn forward(&self, input: &BertInput, train: Train) -> Result<Tensor> {
        let out = self.bert.forward(input, Outputs::default(), train)?;
        self.predict(&out.last_hidden_state)
    }

    /// Vocabulary logits for the given hidden states (any leading shape).
    pub fn predict(&self, hidden: &Tensor) -> Result<Tensor> {
        let x = activation(&self.transform.forward(hidden)?, self.act)?;
        let x = self.transform_norm.forward(&x)?;
        self.decoder.forward(&x)
    }

    /// Logits only at the given (batch, position) pairs: the augmenter asks for a few
    /// masked positions, so the vocabulary projection runs on those rows alone.
    pub fn predict_at(&self, input: &BertInput, positions: &[(usize, usize)]) -> Result<Tensor> {
        let out = self.bert.forward(input, Outputs::default(), None)?;
        let (_, seq, hidden) = out.last_hidden_state.dims3()?;
        let flat = out.last_hidden_state.reshape(((), hidden))?;
        let rows: Vec<u32> = positions
            .iter()
            .map(|&(b, p)| (b * seq + p) as u32)
            .collect();
        let idx = Tensor::new(rows.as_slice(), flat.device())?;
        self.predict(&flat.index_select(&idx, 0)?)
    }
}

/// Mean of the last dimension's softmax cross-entropy against integer targets.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    let picked = logp.gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?;
    picked.neg()?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_family_config;
    use candle_core::Device;
    use candle_nn::VarMap;

    /// transformers numbers RoBERTa-style positions from the ids
    /// (`create_position_ids_from_input_ids`), not from the attention mask: a pad id
    /// under a mask of ones takes `padding_idx`, a real token under a zero counts on.
    #[test]
    fn roberta_positions_come_from_the_ids() {
        let mut config = tiny_family_config(Family::Roberta, 8, 1, 2, 16);
        config.pad_token_id = 1;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let embeddings = BertEmbeddings::new(vb, &config).unwrap();
        let dev = Device::Cpu;
        let input = BertInput {
            input_ids: Tensor::new(&[[0u32, 5, 1, 6, 7]], &dev).unwrap(),
            token_type_ids: Tensor::zeros((1, 5), DType::U32, &dev).unwrap(),
            attention_mask: Tensor::new(&[[1u32, 1, 1, 1, 0]], &dev).unwrap(),
        };
        let got = embeddings.positions(&input).unwrap();
        let table = &embeddings.position_embeddings;
        let want = table
            .index_select(&Tensor::new(&[2u32, 3, 1, 4, 5], &dev).unwrap(), 0)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        assert_eq!(crate::testing::max_abs_diff(&got, &want), 0.0);
    }
}
