// Validates AsyncAPI documents with the official parser, as tools that read
// them (Studio, generators) would. Each argument is a file; "-" is stdin.
// Exits 1 and prints the diagnostics when a document has an error or a
// warning.
//
//   node tests/asyncapi/validate.mjs doc.json
import { readFileSync } from 'node:fs';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';

const parser = new Parser();
let failed = false;
for (const file of process.argv.slice(2)) {
  const text = readFileSync(file === '-' ? 0 : file, 'utf8');
  const { document, diagnostics } = await parser.parse(text);
  const serious = diagnostics.filter(
    (d) => d.severity === DiagnosticSeverity.Error || d.severity === DiagnosticSeverity.Warning,
  );
  for (const d of serious) {
    console.log(`${file}: ${DiagnosticSeverity[d.severity]} ${d.code}: ${d.message} at ${d.path.join('.')}`);
  }
  if (!document || serious.length > 0) {
    failed = true;
  } else {
    console.log(`${file}: valid AsyncAPI ${document.version()}, ${document.channels().length} channel(s), ${document.operations().length} operation(s)`);
  }
}
process.exit(failed ? 1 : 0);
