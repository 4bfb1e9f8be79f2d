// FHIR R4 XML to FHIR JSON, for the elements the published examples we test with use (test/fixtures/fhir): the
// rules of the specification's XML and JSON formats (hl7.org/fhir/R4/xml.html, json.html). The root element names
// the resource (resourceType); a primitive's `value` attribute is its value, a decimal, integer or boolean as a
// JSON number or boolean; an element that repeats in R4 (by its name, from the cardinalities of the resources
// used) is an array even when it occurs once; a resource inside `resource` or `contained` is an object with its
// resourceType; the narrative's xhtml `div` is the xhtml as a string. Anything else (an extension on a primitive,
// text where FHIR has none, an unknown entity) is an error, never guessed.

const FHIR_NS = 'http://hl7.org/fhir';
const XHTML_NS = 'http://www.w3.org/1999/xhtml';

// Elements with cardinality 0..* in the R4 resources and datatypes the examples use (Observation, Bundle, Meta,
// CodeableConcept, Identifier, HumanName, ...). Their names do not collide with a 0..1 element elsewhere in them.
const REPEATING = new Set([
  'identifier', 'basedOn', 'partOf', 'category', 'focus', 'performer', 'interpretation', 'note', 'referenceRange',
  'hasMember', 'derivedFrom', 'component', 'coding', 'extension', 'modifierExtension', 'contained', 'entry', 'link',
  'profile', 'security', 'tag', 'appliesTo', 'event', 'given', 'prefix', 'suffix', 'line', 'telecom', 'address',
  'name',
]);
// Elements whose `value` is a decimal: the Quantity-typed ones (Quantity.value).
const QUANTITIES = new Set(['valueQuantity', 'low', 'high', 'age']);
const BOOLEANS = new Set(['userSelected', 'valueBoolean']);
const INTEGERS = new Set(['valueInteger', 'total', 'rank']);
const RESOURCE_HOLDERS = new Set(['resource', 'contained']);

const ENTITIES = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };

function decode(text) {
  return text.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[A-Za-z]+);|&/g, (match, entity) => {
    if (entity === undefined) throw new Error('a bare & in the XML');
    if (entity.startsWith('#x')) return String.fromCodePoint(parseInt(entity.slice(2), 16));
    if (entity.startsWith('#')) return String.fromCodePoint(parseInt(entity.slice(1), 10));
    if (!(entity in ENTITIES)) throw new Error(`unknown XML entity &${entity};`);
    return ENTITIES[entity];
  });
}

const TOKEN = /<!--[\s\S]*?-->|<\?[\s\S]*?\?>|<\/([A-Za-z_][\w:.-]*)\s*>|<([A-Za-z_][\w:.-]*)((?:\s+[\w:.-]+\s*=\s*(?:"[^"]*"|'[^']*'))*)\s*(\/?)>|([^<]+)/y;
const ATTRIBUTE = /([\w:.-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')/g;

/** The element tree of an XML document: {name, attributes, children, start, end} (offsets into the text),
 * text nodes as {text}. */
export function parseXml(xml) {
  const root = { children: [] };
  const stack = [root];
  TOKEN.lastIndex = 0;
  while (TOKEN.lastIndex < xml.length) {
    const at = TOKEN.lastIndex;
    const m = TOKEN.exec(xml);
    if (!m) throw new Error(`malformed XML at offset ${at}: ${JSON.stringify(xml.slice(at, at + 40))}`);
    const [token, closing, opening, attributeText, selfClosing, text] = m;
    if (token.startsWith('<!--') || token.startsWith('<?')) continue;
    const parent = stack.at(-1);
    if (text !== undefined) {
      parent.children.push({ text: decode(text) });
    } else if (opening !== undefined) {
      const attributes = {};
      for (const [, key, double, single] of attributeText.matchAll(ATTRIBUTE)) attributes[key] = decode(double ?? single);
      const element = { name: opening, attributes, children: [], start: at, end: TOKEN.lastIndex };
      parent.children.push(element);
      if (!selfClosing) stack.push(element);
    } else {
      const open = stack.pop();
      if (!open || open.name !== closing) throw new Error(`</${closing}> closes <${open?.name}> at offset ${at}`);
      open.end = TOKEN.lastIndex;
    }
  }
  if (stack.length !== 1) throw new Error(`<${stack.at(-1).name}> is never closed`);
  const elements = root.children.filter((c) => c.name);
  if (elements.length !== 1 || root.children.some((c) => c.text !== undefined && c.text.trim())) {
    throw new Error('an XML document has exactly one root element');
  }
  return elements[0];
}

const elementsOf = (element) => {
  for (const child of element.children) {
    if (child.text !== undefined && child.text.trim()) throw new Error(`text in <${element.name}>: ${JSON.stringify(child.text.trim())}`);
  }
  return element.children.filter((c) => c.name);
};

function primitive(name, parentName, raw) {
  if (BOOLEANS.has(name)) {
    if (raw !== 'true' && raw !== 'false') throw new Error(`${name}="${raw}" is not a boolean`);
    return raw === 'true';
  }
  if (INTEGERS.has(name) || (name === 'value' && QUANTITIES.has(parentName))) {
    if (!/^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$/.test(raw)) throw new Error(`${name}="${raw}" is not a number`);
    if (INTEGERS.has(name) && !/^-?[0-9]+$/.test(raw)) throw new Error(`${name}="${raw}" is not an integer`);
    return Number(raw);
  }
  return raw;
}

function resource(element, xml) {
  if ((element.attributes.xmlns ?? FHIR_NS) !== FHIR_NS) throw new Error(`<${element.name}> is not in the FHIR namespace`);
  return { resourceType: element.name, ...complex(element, xml) };
}

function complex(element, xml) {
  const out = {};
  for (const [key, value] of Object.entries(element.attributes)) {
    if (key !== 'xmlns') out[key] = value; // url of an extension, id of an element
  }
  for (const child of elementsOf(element)) {
    let value;
    if (child.name === 'div' && child.attributes.xmlns === XHTML_NS) {
      value = xml.slice(child.start, child.end);
    } else if (RESOURCE_HOLDERS.has(child.name)) {
      const inner = elementsOf(child);
      if (inner.length !== 1) throw new Error(`<${child.name}> holds exactly one resource`);
      value = resource(inner[0], xml);
    } else if ('value' in child.attributes) {
      const extra = Object.keys(child.attributes).filter((k) => k !== 'value');
      if (extra.length || elementsOf(child).length) {
        throw new Error(`<${child.name}> has ${extra.length ? `attributes ${extra}` : 'children'}: not supported on a primitive`);
      }
      value = primitive(child.name, element.name, child.attributes.value);
    } else {
      value = complex(child, xml);
    }
    if (REPEATING.has(child.name)) {
      (out[child.name] ??= []).push(value);
    } else {
      if (child.name in out) throw new Error(`<${child.name}> repeats in <${element.name}> but is 0..1 in R4`);
      out[child.name] = value;
    }
  }
  return out;
}

/** A FHIR R4 resource (or Bundle) in XML as FHIR JSON. */
export function fhirXmlToJson(xml) {
  const root = parseXml(xml);
  return resource(root, xml);
}
