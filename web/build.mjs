// Copy the front-end libraries from node_modules into static/vendor (run by `make web`).
// Nothing third-party is committed: this folder is rebuilt from package-lock.json.
import { copyFileSync, existsSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "static", "vendor");
const files = [
  // [source in node_modules, name in static/vendor, needed at run time]
  ["htmx.org/dist/htmx.min.js", "htmx.min.js", true],
  ["htmx.org/LICENSE", "htmx.LICENSE.txt", true],
  ["uplot/dist/uPlot.iife.min.js", "uPlot.iife.min.js", true],
  ["uplot/dist/uPlot.min.css", "uPlot.min.css", true],
  ["uplot/LICENSE", "uPlot.LICENSE.txt", true],
  // used by the browser tests only (devDependency)
  ["axe-core/axe.min.js", "axe.min.js", false],
];

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
for (const [src, dst, required] of files) {
  const from = join(here, "node_modules", src);
  if (!existsSync(from)) {
    if (required) throw new Error(`missing ${from}: run \`npm ci\` in web/`);
    console.log(`skip ${src} (not installed)`);
    continue;
  }
  copyFileSync(from, join(out, dst));
  console.log(`vendor/${dst}`);
}
