using System.Text.Json;
using System.Text.RegularExpressions;
using k8s;
using k8s.Models;
using Weft.Policy;
using YamlDotNet.Core;
using YamlDotNet.Core.Events;

namespace Weft.Inventory;

/// <summary>
/// Reads a stream of Kubernetes objects, one YAML document at a time, and turns every way that can fail into an
/// <see cref="InventoryLoadException"/> with the line and column of the cause. One pass with YamlDotNet's plain parser
/// (which has no event limit) checks each document's syntax and nesting and finds its apiVersion and kind, holding
/// only that document's events; <see cref="TypedYamlJson"/> then turns them into JSON typed by the model's JSON
/// metadata and reads it with KubernetesClient's JSON options. No reflection over model types: the kinds come from
/// <see cref="KubernetesKinds"/>, a table, and the models' JSON metadata is source-generated, so a NativeAOT build
/// reads files the same way (KubernetesYaml cannot run there: its static constructor needs metadata tokens).
/// Bounds, so that a hostile file cannot exhaust the agent: the file's size (the caller's,
/// <see cref="FileInventorySourceOptions.MaxFileBytes"/>), <see cref="MaxNesting"/> levels of nesting
/// (deeper would risk the reader's stack), and <see cref="TypedYamlJson.MaxNodes"/> nodes per object, counting what
/// aliases repeat (a pod has about 50).
/// </summary>
internal static partial class InventoryYaml
{
    /// <summary>Mappings and sequences inside one another; a Kubernetes object needs about 10.</summary>
    public const int MaxNesting = TypedYamlJson.MaxNesting;

    // KubernetesClient's JSON options: its source-generated model metadata, with Weft's own kinds first in the chain.
    private static readonly JsonSerializerOptions JsonOptions = KubernetesJsonOptions();

    /// <summary>Every object of the stream, in order; see <see cref="Read"/>.</summary>
    public static List<IKubernetesObject> Load(string content, string path, IDictionary<string, Type>? extraKinds = null) =>
        Read(content, path, extraKinds).ToList();

    /// <summary>
    /// The objects of the stream, read lazily one document at a time, so a caller that consumes them as they come
    /// never holds more than one document's parse. Throws <see cref="InventoryLoadException"/> at the first
    /// problem, after the objects before it were returned: a caller that must not use half a file builds first
    /// and publishes only when the enumeration has finished.
    /// </summary>
    public static IEnumerable<IKubernetesObject> Read(string content, string path, IDictionary<string, Type>? extraKinds = null)
    {
        // Weft's own custom resources (policies) are always known; the caller's extra kinds may add to or replace them.
        var kinds = new Dictionary<string, Type>(PolicyKinds.All, StringComparer.Ordinal);
        foreach (var (key, type) in extraKinds ?? new Dictionary<string, Type>())
        {
            kinds[key] = type;
        }

        var documents = new DocumentReader(content, path, kinds);
        var json = new TypedYamlJson(JsonOptions);
        while (documents.Next() is { } document)
        {
            if (!Readable(document.Type, kinds))
            {
                // Syntax, nesting and kind were checked; the object would be ignored after reading anyway.
                Log.Debug("inventory", $"{path}: skipped the {document.Kind} starting at line {document.Line}: this build reads only the kinds Weft uses");
                continue;
            }

            if (Deserialize(json, path, document) is IKubernetesObject kubernetesObject)
            {
                yield return kubernetesObject;
            }
        }
    }

    /// <summary>
    /// Whether this build can read objects of <paramref name="type"/>: every kind, except in <c>weft-agent</c>
    /// (<see cref="BuildFeatures.KubernetesModels"/>), which reads Weft's own kinds and the caller's
    /// (<paramref name="kinds"/>) and the Kubernetes kinds <see cref="KubernetesModelJson"/> describes.
    /// </summary>
    private static bool Readable(Type type, Dictionary<string, Type> kinds) =>
        BuildFeatures.KubernetesModels || kinds.ContainsValue(type) || KubernetesModelJson.Describes(type);

    /// <summary>KubernetesClient keeps its options internal; configuring them hands them out (nothing is changed here).</summary>
    private static JsonSerializerOptions KubernetesJsonOptions()
    {
        JsonSerializerOptions? options = null;
        KubernetesJson.AddJsonOptions(o => options = o);
        return options!;
    }

    private static object? Deserialize(TypedYamlJson json, string path, Document document)
    {
        var where = $"in the {document.Kind} starting at line {document.Line}: ";
        try
        {
            return json.Read(document.Events, document.Type);
        }
        catch (YamlValueException ex)
        {
            throw new InventoryLoadException(path, Line(ex.Start), Column(ex.Start), where + Clean(ex.Message), ex);
        }
        catch (YamlException ex)
        {
            // YamlDotNet's merge of "<<" keys refuses a pattern it does not know this way.
            throw new InventoryLoadException(path, Line(ex.Start), Column(ex.Start), where + ex.Message, ex);
        }
        catch (Exception ex)
        {
            // A converter's refusal that the JSON reader could not place (a malformed quantity, say): the document is all there is.
            throw new InventoryLoadException(path, document.Line, document.Column,
                $"cannot read the {document.Kind} starting at line {document.Line}: {Clean(TypedYamlJson.Describe(ex))}", ex);
        }
    }

    /// <summary>One YAML document: its events from its object's mapping start to that mapping's end, where it starts, and its kind.</summary>
    private sealed record Document(List<ParsingEvent> Events, int Line, int Column, string Kind, Type Type);

    /// <summary>
    /// Walks the parser events of the whole stream once, checking each document's syntax, nesting and kind, and
    /// stops after each document to hand its events out.
    /// </summary>
    private sealed class DocumentReader(string content, string path, IReadOnlyDictionary<string, Type> extraKinds)
    {
        private readonly Scanner _scanner = new(new StringReader(content));
        private readonly List<ParsingEvent> _events = [];
        private Parser? _parser;

        public Document? Next()
        {
            try
            {
                return NextDocument();
            }
            catch (YamlException ex) when (ex.Message.Contains("invalid tab", StringComparison.Ordinal))
            {
                // YamlDotNet marks the start of the enclosing mapping; the scanner stopped at the tab itself.
                var tab = _scanner.CurrentPosition;
                throw new InventoryLoadException(path, Line(tab), Column(tab), "a tab indents this line; YAML indents with spaces only", ex);
            }
            catch (YamlException ex)
            {
                throw new InventoryLoadException(path, Line(ex.Start), Column(ex.Start), Describe(ex), ex);
            }
            catch (ArgumentException ex)
            {
                // YamlDotNet's parser refuses a malformed tag ("!!+!") this way, without a position; the scanner
                // has just read the tag, so its position is right after it.
                var stop = _scanner.CurrentPosition;
                throw new InventoryLoadException(path, Line(stop), Column(stop), $"a YAML tag that is not a valid URI ({ex.Message.Replace(" (Parameter 'value')", "", StringComparison.Ordinal)})", ex);
            }
            catch (EndOfStreamException ex)
            {
                // The parser ran out of events inside a document (YamlDotNet also ends its input at a NUL character).
                var stop = _scanner.CurrentPosition;
                throw new InventoryLoadException(path, Line(stop), Column(stop),
                    "YAML ended (or holds a NUL character) inside a mapping or list opened before this point", ex);
            }
            catch (InvalidOperationException ex)
            {
                // YamlDotNet's scanner throws this without a position when a flow collection or quote runs off the
                // end of the file; where the scanner stopped is the best position there is.
                var stop = _scanner.CurrentPosition;
                throw new InventoryLoadException(path, Line(stop), Column(stop),
                    "YAML ended inside an unclosed '{', '[' or quote opened before this point", ex);
            }
        }

        private Document? NextDocument()
        {
            var parser = _parser;
            if (parser is null)
            {
                _parser = parser = new Parser(_scanner);
                parser.Consume<StreamStart>();
            }

            while (parser.TryConsume<DocumentStart>(out var documentStart))
            {
                if (parser.TryConsume<Scalar>(out var scalar))
                {
                    if (scalar.Value.Length != 0 || !scalar.Tag.IsEmpty)
                    {
                        throw new InventoryLoadException(path, Line(scalar.Start), Column(scalar.Start),
                            $"expected a Kubernetes object (a mapping with apiVersion and kind), found the value '{scalar.Value}'");
                    }

                    // An empty document is fine only after an explicit "---" (a trailing "---" is common): it is skipped.
                    var marker = (int)documentStart.End.Index - 3;
                    if (documentStart.IsImplicit || marker < 0 || string.CompareOrdinal(content, marker, "---", 0, 3) != 0)
                    {
                        throw new InventoryLoadException(path, Line(documentStart.Start), Column(documentStart.Start), "empty YAML document");
                    }

                    parser.Consume<DocumentEnd>();
                    continue;
                }

                if (!parser.TryConsume<MappingStart>(out var mapping))
                {
                    var current = parser.Current!;
                    throw new InventoryLoadException(path, Line(current.Start), Column(current.Start),
                        "expected a Kubernetes object (a mapping with apiVersion and kind), found a list or alias");
                }

                _events.Clear();
                _events.Add(mapping);
                var (kind, type) = ReadObject(parser, mapping);
                parser.Consume<DocumentEnd>();
                return new Document(_events, Line(mapping.Start), Column(mapping.Start), kind, type);
            }

            parser.Consume<StreamEnd>();
            return null;
        }

        /// <summary>
        /// Reads one document's object (its mapping start already consumed and held) up to its end, holding its events,
        /// and finds its apiVersion and kind among the top-level keys; returns the kind and its model type.
        /// </summary>
        private (string Kind, Type Type) ReadObject(IParser parser, MappingStart mapping)
        {
            Scalar? apiVersion = null;
            Scalar? kind = null;
            MappingEnd end;
            while (!parser.TryConsume(out end!))
            {
                var keyScalar = parser.Current as Scalar;
                ReadNode(parser); // the key; a complex one is not ours to judge
                var value = parser.Current as Scalar;
                ReadNode(parser);
                if (keyScalar?.Value == "apiVersion" && value is not null)
                {
                    apiVersion = value;
                }
                else if (keyScalar?.Value == "kind" && value is not null)
                {
                    kind = value;
                }
            }

            _events.Add(end);
            if (apiVersion is null || kind is null || apiVersion.Value.Length == 0 || kind.Value.Length == 0)
            {
                throw new InventoryLoadException(path, Line(mapping.Start), Column(mapping.Start),
                    $"object without {(apiVersion is null || apiVersion.Value.Length == 0 ? "apiVersion" : "kind")}: every document needs apiVersion and kind");
            }

            var typeKey = $"{apiVersion.Value}/{kind.Value}";
            if (!extraKinds.TryGetValue(typeKey, out var type) && !KubernetesKinds.All.TryGetValue(typeKey, out type))
            {
                throw new InventoryLoadException(path, Line(kind.Start), Column(kind.Start),
                    $"unknown kind '{kind.Value}' in apiVersion '{apiVersion.Value}': KubernetesClient has no type for it");
            }

            return (kind.Value, type);
        }

        /// <summary>Reads one node and everything inside it into the document's events, refusing nesting deeper than <see cref="MaxNesting"/> (the document's own mapping is level 1).</summary>
        private void ReadNode(IParser parser)
        {
            var level = 0;
            do
            {
                var current = parser.Current ?? throw new InvalidOperationException("the YAML stream ended inside a node");
                level += current.NestingIncrease;
                if (level + 1 > MaxNesting)
                {
                    throw new InventoryLoadException(path, Line(current.Start), Column(current.Start),
                        $"nested more than {MaxNesting} levels deep; a Kubernetes object needs far fewer");
                }

                _events.Add(current);
                parser.MoveNext();
            }
            while (level > 0);
        }
    }

    private static string Describe(YamlException ex) => Clean(ex.Message);

    /// <summary>A message without assembly qualifications and namespaces in the type names it quotes.</summary>
    private static string Clean(string message) => NamespacePrefix().Replace(AssemblyQualification().Replace(message, ""), "");

    // Type names in conversion errors carry ", KubernetesClient, Version=..., PublicKeyToken=..." noise.
    [GeneratedRegex(@", [\w.]+, Version=[^\]]*")]
    private static partial Regex AssemblyQualification();

    [GeneratedRegex(@"\b(System\.Collections\.Generic\.|System\.|k8s\.Models\.)")]
    private static partial Regex NamespacePrefix();

    private static int Line(Mark mark) => (int)mark.Line;

    private static int Column(Mark mark) => (int)mark.Column;
}
