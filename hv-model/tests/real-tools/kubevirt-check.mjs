// Checks a KubeVirt object against KubeVirt's published API model: the TypeScript models that
// @kubevirt-ui-ext/kubevirt-api generates from KubeVirt's OpenAPI schema. Reading an object
// through the model (FromJSON) and writing it back (ToJSON) keeps exactly the fields the schema
// defines, so every field of the input that does not come back is unknown to KubeVirt.
// Types are not checked: the generated readers copy scalar values as they are.
//
// usage: node kubevirt-check.mjs PACKAGE_DIR < object.json   (kind VirtualMachineInstance)
// prints one line per unknown or changed field; exit status 1 when there is one.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const pkg = process.argv[2];
const api = await import(pathToFileURL(join(pkg, 'dist', 'kubevirt', 'index.js')).href);
const input = JSON.parse(readFileSync(0, 'utf8'));
const back = JSON.parse(
  JSON.stringify(api.V1VirtualMachineInstanceToJSON(api.V1VirtualMachineInstanceFromJSON(input))),
);

const problems = [];
function compare(a, b, path) {
  if (a !== null && typeof a === 'object' && !Array.isArray(a)) {
    for (const key of Object.keys(a)) {
      const here = path ? `${path}.${key}` : key;
      if (b === null || typeof b !== 'object' || !(key in b)) {
        problems.push(`${here}: not in KubeVirt's API`);
      } else {
        compare(a[key], b[key], here);
      }
    }
  } else if (JSON.stringify(a) !== JSON.stringify(b)) {
    problems.push(`${path}: ${JSON.stringify(a)} read back as ${JSON.stringify(b)}`);
  }
}
compare(input, back, '');
for (const p of problems) console.log(p);
process.exit(problems.length ? 1 : 0);
