//! The compact tokenized cache training reads: one file per split, little-endian:
//! magic `USTOK\x01\0\0`, u32 example count, then per example u32 length, the token ids (u32)
//! and the loss mask (one byte per token: 0 = not trained on, 1 = trained on, 2 = trained on
//! and part of a tool call's name, where the model chooses its tool).

use std::io::{self, Read, Write};

const MAGIC: &[u8; 8] = b"USTOK\x01\0\0";

/// Mask byte of a trained token.
pub const TRAINED: u8 = 1;
/// Mask byte of a trained token inside a tool call's name (trainers may weight it).
pub const TOOL_NAME: u8 = 2;

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub mask: Vec<u8>,
}

pub fn write(out: &mut impl Write, examples: &[Example]) -> io::Result<()> {
    out.write_all(MAGIC)?;
    out.write_all(&(examples.len() as u32).to_le_bytes())?;
    for example in examples {
        out.write_all(&(example.ids.len() as u32).to_le_bytes())?;
        for id in &example.ids {
            out.write_all(&id.to_le_bytes())?;
        }
        out.write_all(&example.mask)?;
    }
    Ok(())
}

pub fn read(input: &mut impl Read) -> io::Result<Vec<Example>> {
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not an Understudy token cache (bad magic)"));
    }
    let mut word = [0u8; 4];
    input.read_exact(&mut word)?;
    let count = u32::from_le_bytes(word) as usize;
    let mut examples = Vec::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        input.read_exact(&mut word)?;
        let length = u32::from_le_bytes(word) as usize;
        let mut raw = vec![0u8; length * 4];
        input.read_exact(&mut raw)?;
        let ids = raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let mut mask = vec![0u8; length];
        input.read_exact(&mut mask)?;
        examples.push(Example { ids, mask });
    }
    Ok(examples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let examples =
            vec![Example { ids: vec![1, 70000, 3], mask: vec![0, 1, 1] }, Example { ids: vec![], mask: vec![] }];
        let mut bytes = Vec::new();
        write(&mut bytes, &examples).unwrap();
        assert_eq!(read(&mut &bytes[..]).unwrap(), examples);
        assert!(read(&mut &b"garbage!garbage"[..]).is_err());
    }
}
