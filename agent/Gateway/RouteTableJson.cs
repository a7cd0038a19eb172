using System.Text.Json;

namespace Weft.Gateway;

/// <summary>
/// The compiled route table as JSON (admin <c>/routes?format=json</c>, read by <c>weft routes</c>): per listener,
/// the host patterns in the order they are chosen and their routes in the order they are tried.
/// </summary>
internal static class RouteTableJson
{
    /// <param name="ownAddresses">The Gateways served on addresses of their own: each is listed under "gateways" with its address and its routes.</param>
    public static byte[] Serialize(RouteTable table, string? configError, IReadOnlyList<GatewayAddress>? ownAddresses = null)
    {
        using var stream = new MemoryStream();
        using (var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteNumber("version", table.Version);
            json.WriteString("configError", configError);
            json.WriteStartArray("routes");
            WriteRoutes(json, table.Http, table.Https);
            json.WriteEndArray();

            // What each Gateway's own address serves: its listeners' routes only (the routes above are --http and --https).
            json.WriteStartArray("gateways");
            foreach (var own in ownAddresses ?? [])
            {
                json.WriteStartObject();
                json.WriteString("gateway", own.Gateway);
                json.WriteString("http", own.Http?.ToString());
                json.WriteString("https", own.Https?.ToString());
                json.WriteBoolean("known", table.GatewayHttp.ContainsKey(own.Gateway));
                json.WriteStartArray("routes");
                WriteRoutes(json, own.Http is null ? null : table.GatewayHttp.GetValueOrDefault(own.Gateway), own.Https is null ? null : table.GatewayHttps.GetValueOrDefault(own.Gateway));
                json.WriteEndArray();
                json.WriteEndObject();
            }

            json.WriteEndArray();
            json.WriteStartArray("warnings");
            foreach (var warning in table.Warnings)
            {
                json.WriteStringValue(warning);
            }

            json.WriteEndArray();
            json.WriteEndObject();
        }

        return stream.ToArray();
    }

    private static void WriteRoutes(Utf8JsonWriter json, ListenerRoutes? http, ListenerRoutes? https)
    {
        foreach (var (name, listener) in new[] { ("http", http), ("https", https) })
        {
            foreach (var host in listener?.Hosts ?? [])
            {
                foreach (var route in host.Routes)
                {
                    Write(json, name, host.Host.Value, route);
                }
            }

            if (listener?.DefaultRoute is { } fallback)
            {
                Write(json, name, "(default)", fallback);
            }
        }
    }

    private static void Write(Utf8JsonWriter json, string listener, string host, Route route)
    {
        json.WriteStartObject();
        json.WriteString("listener", listener);
        json.WriteString("host", host);
        json.WriteString("pathType", route.Path.Kind.ToString());
        json.WriteString("path", route.Path.Value);
        json.WriteString("method", route.Method);
        json.WriteStartArray("headers");
        foreach (var header in route.Headers)
        {
            json.WriteStringValue(header.Name);
        }

        json.WriteEndArray();
        json.WriteStartArray("query");
        foreach (var query in route.Query)
        {
            json.WriteStringValue(query.Name);
        }

        json.WriteEndArray();
        json.WriteString("source", route.Source);

        // Gateway API Durations as a rule writes them ("500ms", "1m30s"); null: no timeout.
        json.WriteStartObject("timeouts");
        json.WriteString("request", route.Action.Timeouts?.Request is { } requestTimeout ? GatewayDuration.Format(requestTimeout) : null);
        json.WriteString("backendRequest", route.Action.Timeouts?.BackendRequest is { } backendTimeout ? GatewayDuration.Format(backendTimeout) : null);
        json.WriteEndObject();
        if (route.Action.Redirect is { } redirect)
        {
            json.WriteNumber("redirect", redirect.StatusCode);
        }

        json.WriteStartArray("backends");
        foreach (var backend in route.Action.Backends)
        {
            json.WriteStartObject();
            json.WriteString("name", backend.Name);
            json.WriteNumber("weight", backend.Weight);
            json.WriteString("invalid", backend.Invalid);
            json.WriteBoolean("h2c", backend.H2c);
            json.WriteStartArray("endpoints");
            foreach (var endpoint in backend.Endpoints)
            {
                json.WriteStringValue(endpoint.ToString());
            }

            json.WriteEndArray();
            json.WriteEndObject();
        }

        json.WriteEndArray();
        json.WriteEndObject();
    }
}
