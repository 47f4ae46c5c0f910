import { suffix } from "./lib/suffix.js";
export function version() { return { body: { version: "v1", module: suffix() } }; }
