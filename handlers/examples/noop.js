#!/usr/bin/env node
'use strict';
/** noop: returns the payload unchanged (one output, no headers). Used by benchmarks. */
const path = require('path');
const { handler } = require(path.join(__dirname, '../sdk/mqfn-handler'));

handler((payload, ctx) => payload);
