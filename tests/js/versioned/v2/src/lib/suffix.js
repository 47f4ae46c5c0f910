export function suffix() { return "lib-v2"; }
