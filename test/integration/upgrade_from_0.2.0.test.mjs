// The same upgrade test from the released 0.2.0 (a database filled by its own library and worker), since 0.3.0's
// update script is the one a 0.2.0 installation runs alone (upgrade.test.mjs takes 0.1.0 through both).
process.env.PGDIAG_UPGRADE_FROM = '0.2.0';
await import('./upgrade.test.mjs');
