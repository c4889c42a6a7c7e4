//! Replay: the whole records of both journals, in the order written, into the database file.

use super::*;

/// Applies every whole record of both journals to `main`, oldest generation first, one
/// record at a time (a journal can hold far more than the daemon's memory budget). Answers
/// the number of records applied, and the journals from oldest to newest (those without a
/// record first).
pub(super) fn replay(
    main: &dyn Disk,
    journals: &[Box<dyn Disk>; 2],
) -> io::Result<(usize, Vec<usize>)> {
    let file_id = read_identity(main)?;
    let mut payload = Vec::new();
    let mut found = Vec::new();
    let mut empty = Vec::new();
    for (i, journal) in journals.iter().enumerate() {
        let len = journal.size()?;
        match read_record(journal.as_ref(), len, 0, None, &mut payload)? {
            Some(first) => {
                // Checked for both journals before anything is applied.
                if first.id.is_some() && first.id != file_id {
                    return Err(foreign_journal());
                }
                found.push((first.generation, i, first.magic, len));
            }
            None => empty.push(i),
        }
    }
    found.sort_by_key(|(generation, ..)| *generation);
    let mut applied = 0;
    for &(generation, i, magic, len) in &found {
        if magic == MAGIC_V1 {
            tracing::warn!("replaying a journal of the earlier format SVJRNL01");
        }
        let journal = journals[i].as_ref();
        let mut at = 0;
        while let Some(record) =
            read_record(journal, len, at, Some((magic, generation)), &mut payload)?
        {
            if record.id.is_some() && record.id != file_id {
                return Err(foreign_journal());
            }
            apply(main, &payload)?;
            applied += 1;
            at = record.next;
        }
    }
    empty.extend(found.iter().map(|(_, i, ..)| *i));
    Ok((applied, empty))
}

/// Writes a record's entries to the database file, in order.
pub(super) fn apply(main: &dyn Disk, mut payload: &[u8]) -> io::Result<()> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed journal entry");
    while !payload.is_empty() {
        if payload.len() < ENTRY_HEADER {
            return Err(bad());
        }
        let kind = payload[0];
        let offset = u64::from_le_bytes(payload[1..9].try_into().map_err(|_| bad())?);
        let len = u32::from_le_bytes(payload[9..13].try_into().map_err(|_| bad())?) as usize;
        let data = payload
            .get(ENTRY_HEADER..ENTRY_HEADER + len)
            .ok_or_else(bad)?;
        match kind {
            KIND_WRITE => main.write_at(data, offset)?,
            KIND_SET_LEN => main.set_len(offset)?,
            _ => return Err(bad()),
        }
        payload = &payload[ENTRY_HEADER + len..];
    }
    Ok(())
}
