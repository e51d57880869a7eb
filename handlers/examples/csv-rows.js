#!/usr/bin/env node
'use strict';
/**
 * csv-rows: split one CSV file (the payload) into one JSON message per data row.
 *
 * - The first row is the header; each later row becomes {"<column>": "<value>", ...} (values are
 *   strings), emitted with message header `mqfn-row` = the row number (1-based, header excluded)
 *   and `content-type: application/json`.
 * - RFC 4180 quoting: fields in double quotes may contain commas, newlines and "" (an escaped
 *   quote). Line ends may be LF, CRLF or CR. A UTF-8 BOM is ignored. Completely empty lines are
 *   skipped. A row with fewer fields than the header gets "" for the missing columns.
 * - Empty payload (or only a header row) -> no outputs.
 * - Permanent errors: unterminated quoted field, text after a closing quote, a row with more
 *   fields than the header, duplicate column names, invalid UTF-8.
 */
const path = require('path');
const { handler, Output, Permanent } = require(path.join(__dirname, '../sdk/mqfn-handler'));

/** Parse CSV text into an array of rows (arrays of strings). Throws Permanent when malformed. */
function parseCsv(text) {
  const rows = [];
  let row = [];
  let field = '';
  let i = 0;
  let line = 1; // physical line, for error messages
  const n = text.length;
  let fieldStarted = false; // the current row has at least one field/character

  const endField = () => {
    row.push(field);
    field = '';
  };
  const endRow = () => {
    endField();
    // A line with nothing on it at all is skipped.
    if (!(row.length === 1 && row[0] === '' && !fieldStarted)) rows.push(row);
    row = [];
    fieldStarted = false;
  };

  while (i < n) {
    const c = text[i];
    if (c === '"' && field === '') {
      // A quote as the field's first character opens a quoted field (a quote later in an
      // unquoted field is kept literally). A closed quoted field is always followed by a
      // delimiter or line end (checked below), so an empty `field` here means "at field start".
      fieldStarted = true;
      const startLine = line;
      i++;
      let closed = false;
      while (i < n) {
        const d = text[i];
        if (d === '"') {
          if (text[i + 1] === '"') {
            field += '"';
            i += 2;
            continue;
          }
          closed = true;
          i++;
          break;
        }
        if (d === '\n' || (d === '\r' && text[i + 1] !== '\n')) line++;
        field += d;
        i++;
      }
      if (!closed) throw new Permanent(`unterminated quoted field starting on line ${startLine}`);
      // After a closing quote only a delimiter, a line end or the end of input may follow.
      if (i < n && text[i] !== ',' && text[i] !== '\n' && text[i] !== '\r') {
        throw new Permanent(`unexpected character ${JSON.stringify(text[i])} after a closing quote on line ${line}`);
      }
      continue;
    }
    if (c === ',') {
      fieldStarted = true;
      endField();
      i++;
    } else if (c === '\r' || c === '\n') {
      i += c === '\r' && text[i + 1] === '\n' ? 2 : 1;
      line++;
      endRow();
    } else {
      fieldStarted = true;
      field += c;
      i++;
    }
  }
  if (fieldStarted || field !== '' || row.length > 0) endRow();
  return rows;
}

function rowsToObjects(rows) {
  if (rows.length === 0) return [];
  const columns = rows[0];
  const seen = new Set();
  for (const c of columns) {
    if (seen.has(c)) throw new Permanent(`duplicate column name ${JSON.stringify(c)} in the header row`);
    seen.add(c);
  }
  return rows.slice(1).map((r, idx) => {
    if (r.length > columns.length) {
      throw new Permanent(`row ${idx + 1} has ${r.length} fields, the header has ${columns.length}`);
    }
    const obj = {};
    columns.forEach((c, j) => {
      obj[c] = j < r.length ? r[j] : '';
    });
    return obj;
  });
}

function decodeUtf8(buf) {
  try {
    let text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(buf);
    if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    return text;
  } catch (e) {
    throw new Permanent('payload is not valid UTF-8');
  }
}

function csvRows(payload) {
  const objects = rowsToObjects(parseCsv(decodeUtf8(payload)));
  return objects.map(
    (obj, idx) =>
      new Output(JSON.stringify(obj), { 'mqfn-row': String(idx + 1), 'content-type': 'application/json' }),
  );
}

module.exports = { parseCsv, rowsToObjects, csvRows };

if (require.main === module) {
  handler((payload) => csvRows(payload));
}
