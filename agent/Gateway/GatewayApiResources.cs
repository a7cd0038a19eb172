using System.Text.Json.Serialization;
using k8s;
using k8s.Models;

namespace Weft.Gateway;

/// <summary>
/// The Gateway API kinds the gateway reads (gateway.networking.k8s.io, standard channel), as far as it uses them.
/// KubernetesClient has no models for them; unknown fields are ignored when a file is read.
/// </summary>
internal static class GatewayApiKinds
{
    public const string Group = "gateway.networking.k8s.io";
    public const string V1 = Group + "/v1";
    public const string V1Beta1 = Group + "/v1beta1";

    /// <summary>What a GatewayClass and an IngressClass name as their controller for this gateway to serve them.</summary>
    public const string ControllerName = "weft.dev/gateway";

    /// <summary>"apiVersion/kind" to type, for <see cref="Weft.Inventory.FileInventorySourceOptions.ExtraKinds"/>.</summary>
    public static IDictionary<string, Type> All { get; } = new Dictionary<string, Type>(StringComparer.Ordinal)
    {
        [$"{V1}/GatewayClass"] = typeof(GatewayClassResource),
        [$"{V1}/Gateway"] = typeof(GatewayResource),
        [$"{V1}/HTTPRoute"] = typeof(HttpRouteResource),
        [$"{V1Beta1}/ReferenceGrant"] = typeof(ReferenceGrantResource),
        [$"{V1}/ReferenceGrant"] = typeof(ReferenceGrantResource),
        [$"{V1Beta1}/HTTPRoute"] = typeof(HttpRouteResource),
        [$"{V1Beta1}/Gateway"] = typeof(GatewayResource),
        [$"{V1Beta1}/GatewayClass"] = typeof(GatewayClassResource),
    };
}

/// <summary>Fields every Gateway API object shares.</summary>
internal abstract class GatewayApiObject<TSpec> : IKubernetesObject<V1ObjectMeta>
    where TSpec : new()
{
    [JsonPropertyName("apiVersion")]
    public string ApiVersion { get; set; } = GatewayApiKinds.V1;

    [JsonPropertyName("kind")]
    public string Kind { get; set; } = "";

    [JsonPropertyName("metadata")]
    public V1ObjectMeta Metadata { get; set; } = new();

    // `spec: null` (or `spec: ~` in a file) means an empty spec, as the API server reads it; found by fuzzing
    // (a Gateway with a null spec made the route compiler throw).
    [JsonPropertyName("spec")]
    public TSpec Spec
    {
        get => _spec;
        set => _spec = value ?? new();
    }

    private TSpec _spec = new();

    /// <summary>As the API server holds it (Kubernetes mode), to write only what changes; never read from a file.</summary>
    [JsonPropertyName("status")]
    [YamlDotNet.Serialization.YamlIgnore]
    public System.Text.Json.Nodes.JsonObject? Status { get; set; }
}

[KubernetesEntity(Group = GatewayApiKinds.Group, Kind = "GatewayClass", ApiVersion = "v1", PluralName = "gatewayclasses")]
internal sealed class GatewayClassResource : GatewayApiObject<GatewayClassSpec>
{
    public GatewayClassResource() => Kind = "GatewayClass";
}

internal sealed class GatewayClassSpec
{
    [JsonPropertyName("controllerName")]
    public string? ControllerName { get; set; }

    /// <summary>Not used; read so that a change to it changes the spec (and the generation status must observe).</summary>
    [JsonPropertyName("description")]
    public string? Description { get; set; }
}

[KubernetesEntity(Group = GatewayApiKinds.Group, Kind = "Gateway", ApiVersion = "v1", PluralName = "gateways")]
internal sealed class GatewayResource : GatewayApiObject<GatewaySpec>
{
    public GatewayResource() => Kind = "Gateway";
}

internal sealed class GatewaySpec
{
    [JsonPropertyName("gatewayClassName")]
    public string? GatewayClassName { get; set; }

    [JsonPropertyName("listeners")]
    public List<GatewayListener>? Listeners { get; set => field = NullsDropped.From(value); }
}

internal sealed class GatewayListener
{
    [JsonPropertyName("name")]
    public string? Name { get; set; }

    [JsonPropertyName("hostname")]
    public string? Hostname { get; set; }

    [JsonPropertyName("port")]
    public int? Port { get; set; }

    /// <summary>HTTP or HTTPS; other protocols are not served (a warning names the listener).</summary>
    [JsonPropertyName("protocol")]
    public string? Protocol { get; set; }

    [JsonPropertyName("tls")]
    public GatewayTlsConfig? Tls { get; set; }

    [JsonPropertyName("allowedRoutes")]
    public AllowedRoutes? AllowedRoutes { get; set; }
}

internal sealed class GatewayTlsConfig
{
    /// <summary>Terminate (the default); Passthrough is not served.</summary>
    [JsonPropertyName("mode")]
    public string? Mode { get; set; }

    [JsonPropertyName("certificateRefs")]
    public List<ObjectReference>? CertificateRefs { get; set => field = NullsDropped.From(value); }
}

internal sealed class AllowedRoutes
{
    [JsonPropertyName("namespaces")]
    public RouteNamespaces? Namespaces { get; set; }

    /// <summary>Route kinds the listener admits; none given: every kind its protocol serves (HTTPRoute).</summary>
    [JsonPropertyName("kinds")]
    public List<RouteGroupKind>? Kinds { get; set => field = NullsDropped.From(value); }
}

internal sealed class RouteGroupKind
{
    /// <summary>gateway.networking.k8s.io when absent.</summary>
    [JsonPropertyName("group")]
    public string? Group { get; set; }

    [JsonPropertyName("kind")]
    public string? Kind { get; set; }
}

internal sealed class RouteNamespaces
{
    /// <summary>Same (the default), All or Selector.</summary>
    [JsonPropertyName("from")]
    public string? From { get; set; }

    [JsonPropertyName("selector")]
    public V1LabelSelector? Selector { get; set; }
}

/// <summary>A certificateRef, a parentRef or a backendRef: group, kind, namespace, name (and port, sectionName where they apply).</summary>
internal sealed class ObjectReference
{
    [JsonPropertyName("group")]
    public string? Group { get; set; }

    [JsonPropertyName("kind")]
    public string? Kind { get; set; }

    [JsonPropertyName("namespace")]
    public string? Namespace { get; set; }

    [JsonPropertyName("name")]
    public string? Name { get; set; }

    [JsonPropertyName("sectionName")]
    public string? SectionName { get; set; }

    [JsonPropertyName("port")]
    public int? Port { get; set; }

    /// <summary>Only for backendRefs: the share of requests (default 1; 0: none).</summary>
    [JsonPropertyName("weight")]
    public int? Weight { get; set; }
}

[KubernetesEntity(Group = GatewayApiKinds.Group, Kind = "HTTPRoute", ApiVersion = "v1", PluralName = "httproutes")]
internal sealed class HttpRouteResource : GatewayApiObject<HttpRouteSpec>
{
    public HttpRouteResource() => Kind = "HTTPRoute";
}

internal sealed class HttpRouteSpec
{
    [JsonPropertyName("parentRefs")]
    public List<ObjectReference>? ParentRefs { get; set => field = NullsDropped.From(value); }

    [JsonPropertyName("hostnames")]
    public List<string>? Hostnames { get; set => field = NullsDropped.From(value); }

    [JsonPropertyName("rules")]
    public List<HttpRouteRule>? Rules { get; set => field = NullsDropped.From(value); }
}

internal sealed class HttpRouteRule
{
    [JsonPropertyName("matches")]
    public List<HttpRouteMatch>? Matches { get; set => field = NullsDropped.From(value); }

    [JsonPropertyName("filters")]
    public List<HttpRouteFilter>? Filters { get; set => field = NullsDropped.From(value); }

    [JsonPropertyName("backendRefs")]
    public List<ObjectReference>? BackendRefs { get; set => field = NullsDropped.From(value); }

    [JsonPropertyName("timeouts")]
    public HttpRouteTimeouts? Timeouts { get; set; }
}

/// <summary>A rule's timeouts, Gateway API Durations ("500ms", "1m30s"; "0s": none); read by <see cref="GatewayDuration"/>.</summary>
internal sealed class HttpRouteTimeouts
{
    /// <summary>How long the gateway may take to answer the client.</summary>
    [JsonPropertyName("request")]
    public string? Request { get; set; }

    /// <summary>How long one request to the backend may take, from sending it to the whole response; at most <see cref="Request"/>.</summary>
    [JsonPropertyName("backendRequest")]
    public string? BackendRequest { get; set; }
}

internal sealed class HttpRouteMatch
{
    [JsonPropertyName("path")]
    public HttpPathMatch? Path { get; set; }

    [JsonPropertyName("headers")]
    public List<HttpValueMatch>? Headers { get; set => field = NullsDropped.From(value); }

    [JsonPropertyName("queryParams")]
    public List<HttpValueMatch>? QueryParams { get; set => field = NullsDropped.From(value); }

    [JsonPropertyName("method")]
    public string? Method { get; set; }
}

internal sealed class HttpPathMatch
{
    /// <summary>PathPrefix (the default), Exact or RegularExpression.</summary>
    [JsonPropertyName("type")]
    public string? Type { get; set; }

    [JsonPropertyName("value")]
    public string? Value { get; set; }
}

internal sealed class HttpValueMatch
{
    /// <summary>Exact (the default) or RegularExpression.</summary>
    [JsonPropertyName("type")]
    public string? Type { get; set; }

    [JsonPropertyName("name")]
    public string? Name { get; set; }

    [JsonPropertyName("value")]
    public string? Value { get; set; }
}

internal sealed class HttpRouteFilter
{
    [JsonPropertyName("type")]
    public string? Type { get; set; }

    [JsonPropertyName("requestHeaderModifier")]
    public HttpHeaderFilter? RequestHeaderModifier { get; set; }

    [JsonPropertyName("responseHeaderModifier")]
    public HttpHeaderFilter? ResponseHeaderModifier { get; set; }

    [JsonPropertyName("requestRedirect")]
    public HttpRequestRedirectFilter? RequestRedirect { get; set; }

    [JsonPropertyName("urlRewrite")]
    public HttpUrlRewriteFilter? UrlRewrite { get; set; }

    /// <summary>A custom filter (group, kind, name); the gateway has none, so it never resolves.</summary>
    [JsonPropertyName("extensionRef")]
    public ObjectReference? ExtensionRef { get; set; }
}

internal sealed class HttpHeaderFilter
{
    [JsonPropertyName("set")]
    public List<HttpHeader>? Set { get; set => field = NullsDropped.From(value); }

    [JsonPropertyName("add")]
    public List<HttpHeader>? Add { get; set => field = NullsDropped.From(value); }

    [JsonPropertyName("remove")]
    public List<string>? Remove { get; set => field = NullsDropped.From(value); }
}

internal sealed class HttpHeader
{
    [JsonPropertyName("name")]
    public string? Name { get; set; }

    [JsonPropertyName("value")]
    public string? Value { get; set; }
}

internal sealed class HttpRequestRedirectFilter
{
    [JsonPropertyName("scheme")]
    public string? Scheme { get; set; }

    [JsonPropertyName("hostname")]
    public string? Hostname { get; set; }

    [JsonPropertyName("path")]
    public HttpPathModifier? Path { get; set; }

    [JsonPropertyName("port")]
    public int? Port { get; set; }

    [JsonPropertyName("statusCode")]
    public int? StatusCode { get; set; }
}

internal sealed class HttpUrlRewriteFilter
{
    [JsonPropertyName("hostname")]
    public string? Hostname { get; set; }

    [JsonPropertyName("path")]
    public HttpPathModifier? Path { get; set; }
}

internal sealed class HttpPathModifier
{
    /// <summary>ReplaceFullPath or ReplacePrefixMatch.</summary>
    [JsonPropertyName("type")]
    public string? Type { get; set; }

    [JsonPropertyName("replaceFullPath")]
    public string? ReplaceFullPath { get; set; }

    [JsonPropertyName("replacePrefixMatch")]
    public string? ReplacePrefixMatch { get; set; }
}

[KubernetesEntity(Group = GatewayApiKinds.Group, Kind = "ReferenceGrant", ApiVersion = "v1beta1", PluralName = "referencegrants")]
internal sealed class ReferenceGrantResource : GatewayApiObject<ReferenceGrantSpec>
{
    public ReferenceGrantResource() => Kind = "ReferenceGrant";
}

internal sealed class ReferenceGrantSpec
{
    [JsonPropertyName("from")]
    public List<ObjectReference>? From { get; set => field = NullsDropped.From(value); }

    [JsonPropertyName("to")]
    public List<ObjectReference>? To { get; set => field = NullsDropped.From(value); }
}

/// <summary>
/// A list in a routing object may hold a null (<c>rules: [~]</c>, or an entry that is only a comment): it means nothing, and
/// the compiler never sees it (found by fuzzing, docs/faults.md).
/// </summary>
internal static class NullsDropped
{
    public static List<T>? From<T>(List<T>? list)
    {
        list?.RemoveAll(static item => item is null);
        return list;
    }
}
