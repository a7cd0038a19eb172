using System.Text.Json;

namespace Weft.Gateway;

/// <summary>
/// The compiled route table as JSON (admin <c>/routes?format=json</c>, read by <c>weft routes</c>): per listener,
/// the host patterns in the order they are chosen and their routes in the order they are tried.
/// </summary>
internal static class RouteTableJson
{
    public static byte[] Serialize(RouteTable table, string? configError)
    {
        using var stream = new MemoryStream();
        using (var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteNumber("version", table.Version);
            json.WriteString("configError", configError);
            json.WriteStartArray("routes");
            foreach (var (name, listener) in new[] { ("http", table.Http), ("https", table.Https) })
            {
                foreach (var host in listener.Hosts)
                {
                    foreach (var route in host.Routes)
                    {
                        Write(json, name, host.Host.Value, route);
                    }
                }

                if (listener.DefaultRoute is { } fallback)
                {
                    Write(json, name, "(default)", fallback);
                }
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
