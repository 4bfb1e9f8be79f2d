// Preloaded (node -r) into servers that listen on every interface (server-everything's app.listen(PORT)): a
// listen(port[, callback]) without a host binds 127.0.0.1, as every server the tests start must.
const net = require('node:net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if ((typeof args[0] === 'number' || typeof args[0] === 'string') && typeof args[1] !== 'string')
    args.splice(1, 0, '127.0.0.1');
  return listen.apply(this, args);
};
