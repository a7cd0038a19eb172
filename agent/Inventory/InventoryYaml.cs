using System.Collections.Concurrent;
using System.Collections.Frozen;
using System.Reflection;
using System.Text.RegularExpressions;
using k8s;
using k8s.Models;
using Weft.Policy;
using YamlDotNet.Core;
using YamlDotNet.Core.Events;

namespace Weft.Inventory;

/// <summary>
/// Reads a stream of Kubernetes objects with KubernetesClient's own YAML support, one document at a time,
/// and turns every way that can fail into an <see cref="InventoryLoadException"/> with the line and column of
/// the cause. One pass with YamlDotNet's plain parser (which has no event limit) finds each document's
/// extent, apiVersion and kind, and checks what KubernetesYaml would report badly (an unknown kind or a
/// document without apiVersion as a bare KeyNotFoundException, an empty document as a
/// NullReferenceException); then only that document's text goes to KubernetesYaml. Loading the whole file in
/// one KubernetesYaml call would buffer every event of the file and refuse more than 100,000 of them, about
/// 3,000 pods.
/// Bounds, so that a hostile file cannot exhaust the agent: the file's size (the caller's,
/// <see cref="FileInventorySourceOptions.MaxFileBytes"/>), <see cref="MaxNesting"/> levels of nesting
/// (deeper would risk the deserializer's stack), and KubernetesYaml's own limit of 100,000 YAML events per
/// object (a pod is about 100).
/// </summary>
internal static partial class InventoryYaml
{
    /// <summary>Mappings and sequences inside one another; a Kubernetes object needs about 10.</summary>
    public const int MaxNesting = 64;

    // "apiVersion/kind" (group included in apiVersion) to model type for every model KubernetesClient knows:
    // the same set LoadAllFromString uses when given no type map.
    private static readonly FrozenDictionary<string, Type> KnownKinds = typeof(V1Pod).Assembly.GetTypes()
        .Select(t => (Type: t, Attribute: t.GetCustomAttribute<KubernetesEntityAttribute>()))
        .Where(t => t.Attribute is not null)
        .Select(t => (Key: string.IsNullOrEmpty(t.Attribute!.Group) ? $"{t.Attribute.ApiVersion}/{t.Attribute.Kind}" : $"{t.Attribute.Group}/{t.Attribute.ApiVersion}/{t.Attribute.Kind}", t.Type))
        .DistinctBy(t => t.Key)
        .ToFrozenDictionary(t => t.Key, t => t.Type, StringComparer.Ordinal);

    private static readonly MethodInfo DeserializeOne = typeof(KubernetesYaml).GetMethod(nameof(KubernetesYaml.Deserialize), [typeof(string), typeof(bool)])!;

    private static readonly ConcurrentDictionary<Type, Func<string, object?>> Deserializers = new();

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
        while (documents.Next() is { } document)
        {
            if (Deserialize(content, path, document) is IKubernetesObject kubernetesObject)
            {
                yield return kubernetesObject;
            }
        }
    }

    private static object? Deserialize(string content, string path, Document document)
    {
        // The text from the start of the document's first line: columns stay true, lines shift by a constant.
        var text = content.Substring(document.Start, document.End - document.Start);
        var lineOffset = document.FirstLine - 1;
        try
        {
            return Deserializers.GetOrAdd(document.Type, DeserializerFor)(text);
        }
        catch (YamlException yaml)
        {
            // Wrong field types surface as "Exception during deserialization" around the real reason.
            var where = $"in the {document.Kind} starting at line {document.Line}: ";
            throw new InventoryLoadException(path, Line(yaml.Start) + lineOffset, Column(yaml.Start), where + Describe(yaml), yaml);
        }
        catch (Exception ex)
        {
            throw new InventoryLoadException(path, document.Line, 1, $"cannot read the {document.Kind} starting at line {document.Line}: {ex.Message}", ex);
        }
    }

    private static Func<string, object?> DeserializerFor(Type type)
    {
        // KubernetesYaml keeps its configured deserializer private; its generic Deserialize<T> is the way in.
        var typed = DeserializeOne.MakeGenericMethod(type).CreateDelegate<Func<string, bool, object?>>();
        return yaml => typed(yaml, false);
    }

    /// <summary>One YAML document: its text in the file (from the start of its first line), where its object starts, and its kind.</summary>
    private readonly record struct Document(int Start, int End, int FirstLine, int Line, string Kind, Type Type);

    /// <summary>
    /// Walks the parser events of the whole stream once, checking each document's syntax, nesting and kind, and
    /// stops after each document to hand its extent out.
    /// </summary>
    private sealed class DocumentReader(string content, string path, IReadOnlyDictionary<string, Type> extraKinds)
    {
        private readonly Scanner _scanner = new(new StringReader(content));
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

                var (kind, type) = CheckKind(parser, mapping);
                var documentEnd = parser.Consume<DocumentEnd>();
                var startIndex = (int)Math.Min(documentStart.Start.Index, mapping.Start.Index);
                var lineStart = startIndex == 0 ? 0 : content.LastIndexOf('\n', startIndex - 1) + 1;
                var firstLine = Line(documentStart.Start.Index <= mapping.Start.Index ? documentStart.Start : mapping.Start);
                return new Document(lineStart, (int)documentEnd.End.Index, firstLine, Line(mapping.Start), kind, type);
            }

            parser.Consume<StreamEnd>();
            return null;
        }

        /// <summary>Reads the top-level keys of one document (the mapping start already consumed) up to its end; returns the kind and its model type.</summary>
        private (string Kind, Type Type) CheckKind(IParser parser, MappingStart mapping)
        {
            Scalar? apiVersion = null;
            Scalar? kind = null;
            while (!parser.TryConsume<MappingEnd>(out _))
            {
                var key = parser.TryConsume<Scalar>(out var keyScalar) ? keyScalar.Value : null;
                if (keyScalar is null)
                {
                    SkipNode(parser); // a complex key: not ours to judge
                }

                if (key is "apiVersion" or "kind" && parser.TryConsume<Scalar>(out var value))
                {
                    if (key == "apiVersion")
                    {
                        apiVersion = value;
                    }
                    else
                    {
                        kind = value;
                    }
                }
                else
                {
                    SkipNode(parser);
                }
            }

            if (apiVersion is null || kind is null || apiVersion.Value.Length == 0 || kind.Value.Length == 0)
            {
                throw new InventoryLoadException(path, Line(mapping.Start), Column(mapping.Start),
                    $"object without {(apiVersion is null || apiVersion.Value.Length == 0 ? "apiVersion" : "kind")}: every document needs apiVersion and kind");
            }

            var typeKey = $"{apiVersion.Value}/{kind.Value}";
            if (!extraKinds.TryGetValue(typeKey, out var type) && !KnownKinds.TryGetValue(typeKey, out type))
            {
                throw new InventoryLoadException(path, Line(kind.Start), Column(kind.Start),
                    $"unknown kind '{kind.Value}' in apiVersion '{apiVersion.Value}': KubernetesClient has no type for it");
            }

            return (kind.Value, type);
        }

        /// <summary>Skips one node and everything inside it, refusing nesting deeper than <see cref="MaxNesting"/> (the document's own mapping is level 1).</summary>
        private void SkipNode(IParser parser)
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

                parser.MoveNext();
            }
            while (level > 0);
        }
    }

    private static string Describe(YamlException ex)
    {
        // YamlDotNet wraps conversion failures; the innermost message says what was wrong with the value.
        Exception innermost = ex;
        while (innermost.InnerException is { } inner)
        {
            innermost = inner;
        }

        if (innermost == ex)
        {
            return ex.Message;
        }

        var reason = AssemblyQualification().Replace(innermost.Message, "");
        return "a value of the wrong type: " + NamespacePrefix().Replace(reason, "");
    }

    // Type names in conversion errors carry ", KubernetesClient, Version=..., PublicKeyToken=..." noise.
    [GeneratedRegex(@", [\w.]+, Version=[^\]]*")]
    private static partial Regex AssemblyQualification();

    [GeneratedRegex(@"\b(System\.Collections\.Generic\.|System\.|k8s\.Models\.)")]
    private static partial Regex NamespacePrefix();

    private static int Line(Mark mark) => (int)mark.Line;

    private static int Column(Mark mark) => (int)mark.Column;
}
