// The page's libraries, bundled by `deno task build:page` into lib/page/vendor.js and vendor.css (committed:
// the page is served as is, offline, and the server needs no npm files at run time). Edit the
// versions in deno.json, then rebuild; tests/page_vendor_test.ts fails while they name other versions than deno.json.
import { Marked } from "marked";
import DOMPurify from "dompurify";
import { EventSourceParserStream } from "eventsource-parser/stream";
import hljs from "highlight.js/lib/core";
import bash from "highlight.js/lib/languages/bash";
import css from "highlight.js/lib/languages/css";
import diff from "highlight.js/lib/languages/diff";
import go from "highlight.js/lib/languages/go";
import javascript from "highlight.js/lib/languages/javascript";
import json from "highlight.js/lib/languages/json";
import python from "highlight.js/lib/languages/python";
import rust from "highlight.js/lib/languages/rust";
import shell from "highlight.js/lib/languages/shell";
import sql from "highlight.js/lib/languages/sql";
import typescript from "highlight.js/lib/languages/typescript";
import xml from "highlight.js/lib/languages/xml";
import yaml from "highlight.js/lib/languages/yaml";

const languages = {
  bash,
  css,
  diff,
  go,
  javascript,
  json,
  python,
  rust,
  shell,
  sql,
  typescript,
  xml,
  yaml,
};
for (const [name, language] of Object.entries(languages)) hljs.registerLanguage(name, language);

export { DOMPurify, EventSourceParserStream, hljs, Marked };
