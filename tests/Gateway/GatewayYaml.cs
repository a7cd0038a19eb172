using Microsoft.AspNetCore.Http;
using Weft.Gateway;
using Weft.Inventory;

namespace Weft.Tests.Gateway;

/// <summary>Inventory YAML for gateway tests: Services whose endpoints are loopback ports, and the routing objects.</summary>
internal static class GatewayYaml
{
    /// <summary>A Service (port 80) in <paramref name="ns"/> with one ready 127.0.0.1 endpoint per given port (a slice each).</summary>
    public static string Service(string ns, string name, params int[] endpointPorts) => AppService(ns, name, null, endpointPorts);

    /// <summary>As <see cref="Service"/>, with the port's appProtocol (as "kubernetes.io/h2c") when not null.</summary>
    public static string AppService(string ns, string name, string? appProtocol, params int[] endpointPorts) =>
        $$"""
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: {{name}}, namespace: {{ns}}}
        spec: {ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP{{(appProtocol is null ? "" : $", appProtocol: {appProtocol}")}}}]}

        """ + string.Concat(endpointPorts.Select((port, i) => $$"""
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: {{name}}-{{i}}, namespace: {{ns}}, labels: {kubernetes.io/service-name: {{name}} } }
        addressType: IPv4
        ports: [{name: http, port: {{port}}, protocol: TCP}]
        endpoints: [{addresses: [127.0.0.1], conditions: {ready: true} }]

        """));

    /// <summary>An Ingress of class weft in "default" that sends every request to Service <paramref name="service"/>, port 80.</summary>
    public static string DefaultBackendIngress(string service) => $$"""
        ---
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {name: {{service}}, namespace: default}
        spec:
          ingressClassName: weft
          defaultBackend: {service: {name: {{service}}, port: {number: 80} } }

        """;

    /// <summary>A Namespace with labels.</summary>
    public static string Namespace(string name, string labels = "{}") => $$"""
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: {{name}}, labels: {{labels}}}

        """;

    /// <summary>The weft GatewayClass and a Gateway with the given listeners (YAML list items, unindented).</summary>
    public static string Gateway(string listeners, string ns = "gateway-conformance-infra", string name = "same-namespace") => $$"""
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: GatewayClass
        metadata: {name: weft}
        spec: {controllerName: weft.dev/gateway}
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata: {name: {{name}}, namespace: {{ns}}}
        spec:
          gatewayClassName: weft
          listeners:
        {{Indent(listeners, 2)}}

        """;

    /// <summary>An HTTPRoute attached to Gateway <paramref name="parent"/> with the given rules (YAML list items, unindented).</summary>
    public static string HttpRoute(string name, string rules, string ns = "gateway-conformance-infra", string parent = "same-namespace") => $$"""
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: {{name}}, namespace: {{ns}}}
        spec:
          parentRefs: [{name: {{parent}}}]
          rules:
        {{Indent(rules, 2)}}

        """;

    public static string Indent(string text, int spaces) =>
        string.Join('\n', text.Trim('\n').Split('\n').Select(line => new string(' ', spaces) + line));

    public static (List<k8s.IKubernetesObject> Objects, InventorySnapshot Inventory) Load(string yaml)
    {
        var objects = InventoryYaml.Load(yaml, "test.yaml", GatewayApiKinds.All);
        return (objects, InventoryBuilder.Build(objects));
    }

    public static RouteTable Compile(string yaml)
    {
        var (objects, inventory) = Load(yaml);
        return RouteCompiler.Compile(objects, inventory);
    }

    /// <summary>The route the table picks for a request, as the server would look it up.</summary>
    public static Route? Match(RouteTable table, string host, string path, bool https = false, string method = "GET")
    {
        var context = new DefaultHttpContext();
        context.Request.Method = method;
        context.Request.Host = new HostString(host);
        context.Request.Path = path;
        return (https ? table.Https : table.Http).Match(RouteCompiler.NormalizeHost(host) ?? "", context.Request, GatewayServer.NormalizePath(path));
    }
}
